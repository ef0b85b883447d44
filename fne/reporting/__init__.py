"""`fne report` and `fne advise`: reports and advice from run folders."""
