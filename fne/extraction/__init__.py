"""`fne extract`: reader -> tap model -> writer."""
