"""
Model files in real layouts for the tests.

A Depth Anything V2 ONNX shaped like the public one, and a Hugging Face cache that holds it.

The public ``onnx-community/depth-anything-v2-small`` file (``onnx/model.onnx``) cannot be
downloaded here, so :func:`community_onnx` exports transformers' DepthAnythingForDepthEstimation
with random weights the way that file was made: the TorchScript exporter, opset 17, input
``pixel_values`` [batch_size, 3, height, width] and output ``predicted_depth`` [batch_size,
height, width] with dynamic axes, so that the position embedding stays a bicubic Resize with
sizes computed from the input shape. The ViT-S export has the public file's architecture and
size (98.9 MB); 'tiny' keeps the tests that do not need ViT-S fast. Its output is NOT depth.

Exports are cached in ``test/.models/`` (git-ignored) under a hash of the recipe, so a session
exports each once, later sessions (and the Python 3.8 tier, which has no torch) reuse the file.

:func:`make_hub_cache` writes the Hugging Face cache layout huggingface_hub reads:
``models--onnx-community--depth-anything-v2-small/{refs/main, blobs/<sha256>,
snapshots/<revision>/onnx/model.onnx -> ../../../blobs/<sha256>}``.
"""
import collections
import contextlib
import hashlib
import inspect
import json
import os
import shutil

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STORE = os.environ.get('DEPTH_ROS_TEST_MODELS') or os.path.join(ROOT, 'test', '.models')
REPO = 'onnx-community/depth-anything-v2-small'
FILENAME = 'onnx/model.onnx'
REVISION = '0123456789abcdef0123456789abcdef01234567'
RECIPE = 2  # bump when the export below changes


def _recipe(variant, seed):
    return {'recipe': RECIPE, 'variant': variant, 'seed': seed, 'opset': 17,
            'exporter': 'torchscript', 'input': 'pixel_values', 'output': 'predicted_depth',
            'dynamic': ['batch_size', 'height', 'width']}


def community_onnx(variant='tiny', seed=0):
    """Return the path of a random-weight export shaped like the public file (cached)."""
    recipe = _recipe(variant, seed)
    key = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]
    path = os.path.join(STORE, 'da2-{}-community-{}.onnx'.format(variant, key))
    if os.path.isfile(path):
        return path
    try:
        import torch
        import transformers  # noqa: F401
    except ImportError:
        import pytest     # here only: `make test` runs this file before pytest is installed
        pytest.skip('no cached {} and no torch to export it (run the Python 3.11 tier '
                    'first)'.format(os.path.basename(path)))
    from filelock import FileLock

    os.makedirs(STORE, exist_ok=True)
    with FileLock(path + '.lock'):
        if os.path.isfile(path):
            return path
        import warnings

        from depth_ros.inference import torch_model
        from depth_ros.util import atomic_path
        torch.set_num_threads(1)
        model = torch_model.build_model(variant, seed=seed).eval()
        with atomic_path(path) as tmp, warnings.catch_warnings(), torch.no_grad(), \
                _dynamic_head_size(model):
            warnings.simplefilter('ignore')
            kwargs = {'dynamo': False} if 'dynamo' in inspect.signature(
                torch.onnx.export).parameters else {}
            torch.onnx.export(
                model, (torch.zeros(1, 3, 56, 98),), tmp, opset_version=17,
                input_names=['pixel_values'], output_names=['predicted_depth'],
                dynamic_axes={'pixel_values': {0: 'batch_size', 2: 'height', 3: 'width'},
                              'predicted_depth': {0: 'batch_size', 1: 'height', 2: 'width'}},
                **kwargs)
    return path


@contextlib.contextmanager
def _dynamic_head_size(model):
    """
    Let the head's last upsampling follow the input size in the traced graph.

    transformers' head writes ``int(patch_height * patch_size)``, which the tracer records as
    the trace's constant; the public file's output follows the input (its exporter traced the
    size), so for the export the head computes the size without int(). Restored on exit.
    """
    import torch.nn.functional as F

    head = model.head
    original = head.forward

    def forward(hidden_states, patch_height, patch_width):
        x = head.conv1(hidden_states[head.head_in_index])
        x = F.interpolate(x, (patch_height * head.patch_size, patch_width * head.patch_size),
                          mode='bilinear', align_corners=True)
        x = head.activation1(head.conv2(x))
        x = head.activation2(head.conv3(x)) * head.max_depth
        return x.squeeze(dim=1)
    head.forward = forward
    try:
        yield
    finally:
        head.forward = original


def make_hub_cache(root, onnx_path, repo=REPO, filename=FILENAME, revision=REVISION):
    """
    Put ``onnx_path`` into a Hugging Face cache at ``root`` as huggingface_hub lays it out.

    The blob is named by its sha256 (the LFS etag) and links to ``onnx_path`` (no 99 MB copy);
    the snapshot file links to the blob, ``refs/main`` names the revision. Returns the
    snapshot file's path.
    """
    from depth_ros.util import file_sha256

    repo_dir = os.path.join(str(root), 'models--' + repo.replace('/', '--'))
    sha = file_sha256(onnx_path)
    blob = os.path.join(repo_dir, 'blobs', sha)
    snapshot = os.path.join(repo_dir, 'snapshots', revision, *filename.split('/'))
    for folder in (os.path.dirname(blob), os.path.dirname(snapshot),
                   os.path.join(repo_dir, 'refs')):
        os.makedirs(folder, exist_ok=True)
    if not os.path.lexists(blob):
        os.symlink(os.path.abspath(onnx_path), blob)
    if not os.path.lexists(snapshot):
        os.symlink(os.path.relpath(blob, os.path.dirname(snapshot)), snapshot)
    with open(os.path.join(repo_dir, 'refs', 'main'), 'w') as f:
        f.write(revision)
    return snapshot


def copy_file(src, dst):
    """Copy a model file (for tests that change it)."""
    os.makedirs(os.path.dirname(str(dst)), exist_ok=True)
    shutil.copyfile(str(src), str(dst))
    return str(dst)


def find_layernorms(graph):
    """
    Find decomposed LayerNorms by their data flow alone (node names are not looked at).

    x -> ReduceMean -> Sub(x, mean) -> Pow -> ReduceMean -> Add(eps) -> Sqrt -> Div(Sub, Sqrt)
    -> Mul(weight) -> Add(bias). Returns one list of 9 nodes per LayerNorm.
    """
    consumers = collections.defaultdict(list)
    for node in graph.node:
        for name in node.input:
            consumers[name].append(node)

    def only(tensor, op_type):
        found = [n for n in consumers[tensor] if n.op_type == op_type]
        return found[0] if len(found) == 1 else None

    norms = []
    for mean in (n for n in graph.node if n.op_type == 'ReduceMean'):
        sub = only(mean.output[0], 'Sub')
        if sub is None or list(sub.input) != [mean.input[0], mean.output[0]]:
            continue
        chain = [mean, sub]
        tensor = sub.output[0]
        for op_type in ('Pow', 'ReduceMean', 'Add', 'Sqrt', 'Div', 'Mul', 'Add'):
            node = only(tensor, op_type)
            if node is None:
                break
            chain.append(node)
            tensor = node.output[0]
        if len(chain) == 9 and list(chain[6].input) == [sub.output[0], chain[5].output[0]]:
            norms.append(chain)
    return norms


if __name__ == '__main__':
    # `python test/model_files.py VARIANT...` (make test): export the files the Python 3.8 tier
    # reads before it runs (it has no torch to export them); prints their paths.
    import sys
    for name in sys.argv[1:] or ['tiny']:
        print(community_onnx(name))
