"""Report sections that set one axis side by side (precision, proposal) or hold the run against theory."""
