"""Small on-disk fixtures for the data, training and evaluation tests (made in tmp folders)."""
