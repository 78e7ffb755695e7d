"""What a daemon tells: cluster events and its log setup."""
