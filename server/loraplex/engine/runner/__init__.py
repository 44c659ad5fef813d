"""Running the model: the packed batch or the decode buffers/CUDA graphs."""
