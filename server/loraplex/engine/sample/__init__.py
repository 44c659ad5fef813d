"""From logits to tokens: the sampler and the logprobs."""
