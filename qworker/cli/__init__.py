"""Command-line layers: they parse, delegate to the library, and print."""
