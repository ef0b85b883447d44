"""`fne run`: pipeline files and their runner."""
