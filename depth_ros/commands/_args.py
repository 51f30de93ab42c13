"""
Argument helpers shared by the `depth-ros` sub-commands: sizes, integers, the model arguments.

Light on purpose (argparse and re only at import), so that `depth-ros --help` stays fast; the
model is loaded through depth_ros.inference.load_model only when a command runs.

``--device`` ('cpu', 'cuda', 'cuda:0'; eval, bench, process-bag) is the torch device of torch
and marigold, and ONNX Runtime's CUDA provider for onnxruntime; a CUDA device index for
TensorRT is ``--gpu`` (model build, model verify).
"""
from __future__ import annotations

import argparse
import os
import re
from typing import Optional, Tuple

_SIZE = re.compile(r'^\s*(\d+)\s*[xX,]\s*(\d+)\s*$')


def parse_size(text: str, option: Optional[str] = '--size', example: str = '1280x720',
               model_input: bool = False) -> Tuple[int, int]:
    """
    Parse 'WIDTHxHEIGHT' (also 'W,H') into (width, height).

    :param option: the option named in errors (None: 'size', for argparse types, whose
        messages already name the option).
    :param model_input: also require multiples of 14 (a model input size).
    :raises ValueError: naming the option and the text.
    """
    what = '`{}`'.format(option) if option else 'size'
    match = _SIZE.match(str(text))
    if not match:
        raise ValueError('{} must be WIDTHxHEIGHT, e.g. {}, got {!r}'.format(what, example, text))
    width, height = int(match.group(1)), int(match.group(2))
    if width <= 0 or height <= 0:
        raise ValueError('{} must be positive, got {!r}'.format(what, text))
    if model_input:
        from depth_ros.core.preprocess import check_input_size
        try:
            check_input_size(width, height)
        except ValueError as exc:
            raise ValueError('{} {!r}: {}'.format(option or 'size', text, exc))
    return width, height


def size_type(example: str = '518x294', model_input: bool = False):
    """Return an argparse ``type`` that parses WIDTHxHEIGHT (see :func:`parse_size`)."""
    def parse(text: str) -> Tuple[int, int]:
        try:
            return parse_size(text, None, example, model_input)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc))
    return parse


def _int_type(low: int, what: str):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = low - 1
        if value < low:
            raise argparse.ArgumentTypeError('must be an integer {}, got {!r}'.format(
                what, text))
        return value
    return parse


# argparse types: the message names the value, argparse prefixes the option.
non_negative_int = _int_type(0, '>= 0')
positive_int = _int_type(1, '> 0')


def _ensemble_size(text: str) -> int:
    # Marigold's ensemble: 2 is refused (depth_ros.inference.marigold.check_settings).
    value = positive_int(text)
    if value == 2:
        raise argparse.ArgumentTypeError('must be 1 or an integer >= 3, got {!r}'.format(text))
    return value


def output_dir(text: str) -> str:
    """
    Argparse ``type`` of an output folder (``--out``): refused at once, not after the work.

    The folder may not exist yet; it must not be a file, and the nearest existing folder on
    its path must be writable. Returns ``text`` unchanged.
    """
    path = os.path.abspath(os.path.expanduser(text))
    if os.path.exists(path) and not os.path.isdir(path):
        raise argparse.ArgumentTypeError('{!r} exists and is not a folder'.format(text))
    _check_creatable(text, path)
    return text


def output_file(text: str) -> str:
    """Argparse ``type`` of an output file: not a folder, in a folder that can be written."""
    path = os.path.abspath(os.path.expanduser(text))
    if os.path.isdir(path):
        raise argparse.ArgumentTypeError('{!r} is a folder, not a file'.format(text))
    _check_creatable(text, os.path.dirname(path))
    return text


def _check_creatable(text: str, path: str) -> None:
    existing = path
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise argparse.ArgumentTypeError('{!r}: {} is a file, not a folder'.format(
            text, existing))
    if not os.access(existing, os.W_OK | os.X_OK):
        raise argparse.ArgumentTypeError('{!r}: folder {} is not writable'.format(
            text, existing))


class DeprecatedAlias(argparse.Action):
    """An old option spelling: stores into the new option's ``dest`` and records a warning."""

    def __init__(self, option_strings, dest, new_option: str = '', **kwargs):
        self.new_option = new_option
        kwargs.setdefault('help', argparse.SUPPRESS)
        super(DeprecatedAlias, self).__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, values)
        notes = list(getattr(namespace, 'deprecations', None) or [])
        notes.append('{} is deprecated, use {} (same value)'.format(option_string,
                                                                    self.new_option))
        namespace.deprecations = notes


def add_gpu_argument(parser) -> None:
    """Add ``--gpu N`` (CUDA device index for TensorRT); ``--device`` is a deprecated alias."""
    parser.add_argument('--gpu', type=non_negative_int, default=0, metavar='N',
                        help='CUDA device index')
    parser.add_argument('--device', dest='gpu', type=non_negative_int, action=DeprecatedAlias,
                        new_option='--gpu')


def add_model_arguments(parser, model_help: str,
                        random_weights_help: Optional[str] = None,
                        marigold: bool = False) -> None:
    """
    Add the model arguments: --backend, --model, --device (see the module docstring).

    Optionally also --random-weights and Marigold's --steps, --ensemble, --processing-resolution.

    :param random_weights_help: help of --random-weights; None: no such option.
    :param marigold: add Marigold's settings.
    """
    from depth_ros.inference.registry import BACKENDS, COMMAND_BACKENDS

    torch_backends = ' / '.join(n for n in COMMAND_BACKENDS if BACKENDS[n].torch_device)
    parser.add_argument('--backend', default='onnxruntime', choices=COMMAND_BACKENDS,
                        help='inference backend')
    # Not required by argparse: Marigold has a default checkpoint; load_model names --model
    # for the backends that need one.
    parser.add_argument('--model', default=None, help=model_help)
    parser.add_argument('--device', default=None,
                        help='cpu (default), cuda or cuda:N: the torch device for {}; for '
                             "onnxruntime, ONNX Runtime's CUDA provider on GPU N".format(
                                 torch_backends))
    if random_weights_help is not None:
        parser.add_argument('--random-weights', action='store_true', help=random_weights_help)
    if marigold:
        # Checked here, naming the option ('`ensemble_size` must be ...' came from the loader).
        parser.add_argument('--steps', type=positive_int, default=None,
                            help='Marigold denoising steps')
        parser.add_argument('--ensemble', type=_ensemble_size, default=1,
                            help='Marigold ensemble size (1, or 3 and more)')
        parser.add_argument('--processing-resolution', type=non_negative_int, default=None,
                            help='Marigold processing resolution (0 = native)')


def load_model(args):
    """
    Load the model that the arguments of :func:`add_model_arguments` name.

    Errors: see depth_ros.inference.load_model (ValueError, ModelLoadError: one line each);
    a missing ``--model`` and a variant name without ``--random-weights`` are told in the
    command's own options (the library's words are its arguments: ``random_weights=True``).
    """
    from depth_ros.inference import BACKENDS, load_model as load

    random_weights = getattr(args, 'random_weights', False)
    if BACKENDS[args.backend].needs_model and not args.model:
        raise ValueError('`--backend {}` needs `--model` (an ONNX file, engine, checkpoint '
                         'or hub id)'.format(args.backend))
    if args.backend == 'torch' and not random_weights and not os.path.exists(args.model):
        from depth_ros.inference.torch_model import VARIANTS
        if args.model in VARIANTS:
            raise ValueError('`--model {}` is a variant name, not a checkpoint: {}'.format(
                args.model, 'add `--random-weights` to build it untrained (the figures then '
                'mean nothing)' if hasattr(args, 'random_weights') else
                'pass a checkpoint folder, .pth file or hub id'))
    device, providers = _device_options(args.backend, args.device)
    model = load(args.backend, args.model, device=device, providers=providers,
                 random_weights=random_weights,
                 steps=getattr(args, 'steps', None), ensemble_size=getattr(args, 'ensemble', 1),
                 processing_resolution=getattr(args, 'processing_resolution', None))
    used = getattr(model, 'providers', None)
    if providers and providers[0][0] == CUDA_PROVIDER and used and used[0] != CUDA_PROVIDER:
        # onnxruntime-gpu lists its CUDA provider even where CUDA cannot start, then runs on
        # the CPU: a benchmark or an evaluation would say nothing of the GPU.
        raise ValueError('`--device {}`: ONNX Runtime\'s CUDA provider did not start (the '
                         'session runs on {})'.format(args.device, ', '.join(used)))
    return model


CUDA_PROVIDER = 'CUDAExecutionProvider'
_DEVICE = re.compile(r'^(cpu|cuda)(?::(\d+))?$')


def check_device(device: Optional[str]) -> None:
    """Refuse ``--device`` (ValueError naming it) unless it is None, cpu, cuda or cuda:N."""
    if device is not None and not _DEVICE.match(device.strip()):
        raise ValueError('`--device` must be cpu, cuda or cuda:N, got {!r}'.format(device))


def _device_options(backend: str, device: Optional[str], available=None):
    """
    Return ``(device, providers)`` for ``--device`` with ``--backend``.

    torch, marigold: the torch device (default 'cpu'). onnxruntime: its providers, ``cuda:N``
    the CUDA provider on GPU N before the CPU's, ``available`` (ONNX Runtime's own when None)
    having it. Others take no device: given one, ValueError naming ``--device``.
    """
    from depth_ros.inference.registry import BACKENDS

    check_device(device)
    spec = BACKENDS[backend]
    if 'device' in spec.uses:
        return (device.strip() if device else 'cpu'), None
    if backend != 'onnxruntime':
        if device is not None:
            raise ValueError('`--device` applies to {} and onnxruntime, not to --backend {}'
                             .format(', '.join(n for n in BACKENDS if 'device' in
                                               BACKENDS[n].uses), backend))
        return None, None
    match = _DEVICE.match((device or 'cpu').strip())
    if match.group(1) == 'cpu':
        return None, None   # ONNX Runtime's CPU provider, as without --device
    if available is None:
        import onnxruntime
        available = onnxruntime.get_available_providers()
    if CUDA_PROVIDER not in available:
        raise ValueError('`--device {}` needs ONNX Runtime\'s CUDA provider (onnxruntime-gpu); '
                         'this onnxruntime has {}'.format(device, ', '.join(available)))
    return None, [(CUDA_PROVIDER, {'device_id': int(match.group(2) or 0)}),
                  ('CPUExecutionProvider', {})]
