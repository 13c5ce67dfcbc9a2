"""One module per vendor format."""
