"""After the forward: request state, detokenizing, stops, the outputs."""
