"""A callback the distributed scripts share: every batch's logs, as floats."""

import keras


class BatchLogs(keras.callbacks.Callback):
    """Keeps every batch's logs."""

    def __init__(self):
        super().__init__()
        self.logs = []

    def on_train_batch_end(self, batch, logs=None):
        self.logs.append({k: float(v) for k, v in logs.items()})
