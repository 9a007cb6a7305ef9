"""Images, MATLAB-compatible resizing, benchmark sets and training data."""
