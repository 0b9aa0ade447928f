"""PLACEHOLDER until the fast kernel lands."""
import numpy as np


def sgd_step(w1, b1, w2, b2, x, y, lr):
    from pipeline.model import sigmoid
    B = len(x)
    a1 = sigmoid(x @ w1 + b1)
    a2 = sigmoid(a1 @ w2 + b2)
    err = a2 - y
    loss = float(np.sum(err * err) / 2)
    d2 = err * a2 * (1 - a2)
    d1 = (d2 @ w2.T) * a1 * (1 - a1)
    s = w1.dtype.type(lr / B)
    w2 -= s * (a1.T @ d2); b2 -= s * d2.sum(0); w1 -= s * (x.T @ d1); b1 -= s * d1.sum(0)
    return loss
