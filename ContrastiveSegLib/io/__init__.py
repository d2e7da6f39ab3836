"""Reading and writing volumes with their geometry, and understanding sparse slice annotations."""
