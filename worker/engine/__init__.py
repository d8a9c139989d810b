"""The training engine: RunSpec -> configs, the training steps (one process or many), the metric callback,
failures explained, the evaluation after training and the pre-flight estimate."""
