"""Data for training and testing: slice sampling, intensity handling, the bundled sample and CT-like phantoms."""
