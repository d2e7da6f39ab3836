"""Data for training and testing: slice sampling, intensity handling and the bundled sample."""
