"""The network, its loss and its conversion to .tflite. Needs TensorFlow (the `train` extra).

Two small MLPs, one for load and one for PV, each mapping one interval's features to the 10, 50 and
90 % quantiles of that interval's value (scaled per household). An MLP on lags, calendar and the
weather proxy rather than the papers' 1-layer LSTM: the forecast is one batch of 96 independent
rows, which LiteRT runs in well under a millisecond, and the lags the LSTM would have to learn to
pick out of 672 steps are given to it directly.
"""
from __future__ import annotations

import tempfile

import numpy as np

from .runtime import QUANTILES


def limit_threads(threads: int = 1) -> None:
    """The build machine is shared: keep TensorFlow to a thread or two, and make its kernels
    deterministic so that a seed gives the same model."""
    import tensorflow as tf
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)
    tf.config.experimental.enable_op_determinism()


def _quantile_branch(keras, n_features: int, hidden: int, name: str):
    inputs = keras.Input((n_features,), name=f"{name}_x")
    x = keras.layers.Dense(hidden, activation="relu", name=f"{name}_dense1")(inputs)
    x = keras.layers.Dense(hidden, activation="relu", name=f"{name}_dense2")(x)
    raw = keras.layers.Dense(3, name=f"{name}_raw")(x)
    # p50 free; p10 and p90 below and above it by a softplus, so quantiles never cross.
    mid = raw[:, 1:2]
    out = keras.layers.Concatenate(name=f"{name}_q")([
        mid - keras.ops.softplus(raw[:, 0:1]), mid, mid + keras.ops.softplus(raw[:, 2:3])])
    return keras.Model(inputs, out, name=name)


def build_models(n_load_features: int, n_pv_features: int, hidden: int = 64, seed: int = 0):
    import keras
    keras.utils.set_random_seed(seed)  # the initial weights
    return (_quantile_branch(keras, n_load_features, hidden, "load"),
            _quantile_branch(keras, n_pv_features, hidden, "pv"))


def pinball_loss(y_true, y_pred):
    """Mean quantile (pinball) loss over p10/p50/p90; the p50 term is half the absolute error."""
    import keras
    q = keras.ops.convert_to_tensor(np.array(QUANTILES, dtype=np.float32))
    err = y_true - y_pred  # y_true broadcasts [N, 1] against [N, 3]
    return keras.ops.mean(keras.ops.maximum(q * err, (q - 1.0) * err), axis=-1)


def fit(model, x: np.ndarray, y: np.ndarray, weight: np.ndarray, val: tuple, epochs: int,
        batch_size: int, seed: int, learning_rate: float = 1e-3, log=print):
    import keras
    keras.utils.set_random_seed(seed)
    model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss=pinball_loss)
    stop = keras.callbacks.EarlyStopping(patience=4, restore_best_weights=True)
    lower = keras.callbacks.ReduceLROnPlateau(factor=0.5, patience=2)

    class Log(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            log(f"  {model.name} epoch {epoch + 1}: loss {logs['loss']:.4f} "
                f"val {logs['val_loss']:.4f}")

    model.fit(x, y[:, None], sample_weight=weight,
              validation_data=(val[0], val[1][:, None], val[2]), epochs=epochs,
              batch_size=batch_size, shuffle=True, verbose=0, callbacks=[stop, lower, Log()])
    return model


def to_tflite(load_model, pv_model, quantize: bool) -> bytes:
    """One .tflite with both branches (inputs load_x, pv_x; outputs load_q, pv_q), so a forecast
    is one invocation. quantize: dynamic-range int8 weights (float activations)."""
    import keras
    import tensorflow as tf
    combined = keras.Model({"load_x": load_model.input, "pv_x": pv_model.input},
                           {"load_q": load_model.output, "pv_q": pv_model.output})
    with tempfile.TemporaryDirectory() as tmp:
        combined.export(tmp, format="tf_saved_model", verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(tmp)
        if quantize:
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        return converter.convert()
