"""DepthModel.predict: the shared pre/post-processing path every backend uses."""
import threading
import time

from depth_ros.inference.base import DepthModel
import numpy as np


class _SlowChannelMean(DepthModel):
    """Test backend: relative = mean of the normalised channels, after a pause."""

    backend = 'test'

    def _infer(self, batch):
        time.sleep(0.01)   # widen the window in which a second call could overwrite the input
        return batch[0].mean(axis=0)


def test_concurrent_predict_calls_do_not_mix_their_inputs():
    model = _SlowChannelMean(input_size=(28, 14))
    rng = np.random.RandomState(0)
    images = [rng.randint(0, 256, (30, 50, 3)).astype(np.uint8) for _ in range(4)]
    expected = [model.predict(im) for im in images]
    results = {}

    def worker(i):
        for _ in range(5):
            results.setdefault(i, []).append(model.predict(images[i]))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(images))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, outs in results.items():
        for out in outs:
            assert np.array_equal(out, expected[i]), 'image {}: output of another call'.format(i)
    assert model.latency.count == 4 + 4 * 5
