"""Training targets: one module per hosted platform's file format, listed in `registry`."""
