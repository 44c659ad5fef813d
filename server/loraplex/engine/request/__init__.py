"""What a request is: its parameters, its sequence, its outputs."""
