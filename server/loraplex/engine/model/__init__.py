"""Where the base weights come from: loading, the default model, dummies."""
