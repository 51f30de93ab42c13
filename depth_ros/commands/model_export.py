"""
`depth-ros model export`: Depth Anything V2 checkpoint -> ONNX at a fixed input size.

Examples::

    depth-ros model export --checkpoint depth-anything/Depth-Anything-V2-Small-hf --out m.onnx
    depth-ros model export --checkpoint models/depth_anything_v2_vits.pth --out m.onnx
    depth-ros model export --variant vits --random-weights --out untrained.onnx
    # Jetson Xavier NX, JetPack 5.1 (TensorRT 8.5): opset 16, LayerNorm decomposed
    depth-ros model export --checkpoint depth-anything/Depth-Anything-V2-Small-hf \
        --target tensorrt8.5 --out da2_vits_518x294_op16.onnx
"""
from __future__ import annotations

import logging

from depth_ros.cli import HelpFormatter
from depth_ros.commands import _args

LOG = logging.getLogger('depth_ros.commands.model_export')

VARIANT_CHOICES = ('vits', 'vitb', 'vitl', 'tiny')


def register(subparsers) -> None:
    """Add the `export` action to the `model` sub-command."""
    # export.py imports torch only inside its functions, so --help stays light.
    from depth_ros.inference.export import TARGET_OPSETS

    parser = subparsers.add_parser(
        'export', help='export Depth Anything V2 to ONNX (fixed input size)',
        description='Load a Depth Anything V2 checkpoint (Hugging Face folder, hub id or '
                    'official .pth) and export it to ONNX with one input "image" [1,3,h,w] '
                    'and one output "relative_disparity" [1,h,w].',
        formatter_class=HelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument('--checkpoint', metavar='PATH_OR_ID',
                        help='checkpoint folder (config.json + model.safetensors), hub id '
                             '(e.g. depth-anything/Depth-Anything-V2-Small-hf) or official '
                             'depth_anything_v2_vit*.pth')
    source.add_argument('--random-weights', action='store_true',
                        help='export an UNTRAINED network of --variant (pipeline tests only)')
    parser.add_argument('--variant', choices=VARIANT_CHOICES, default=None,
                        help='architecture for --random-weights (default vits); with '
                             '--checkpoint, a check of what the checkpoint holds')
    parser.add_argument('--seed', type=int, default=0, help='seed for --random-weights')
    parser.add_argument('--out', required=True, metavar='FILE.onnx', type=_args.output_file,
                        help='output ONNX file')
    parser.add_argument('--width', type=int, default=518,
                        help='model input width (multiple of 14)')
    parser.add_argument('--height', type=int, default=294,
                        help='model input height (multiple of 14)')
    parser.add_argument('--target', choices=sorted(TARGET_OPSETS), default=None,
                        help='what will run the ONNX: tensorrt8.5 (JetPack 5.1) -> opset 16, '
                             'LayerNorm decomposed (TensorRT parses the LayerNormalization '
                             'node only from 8.6); tensorrt8.6/tensorrt10 (JetPack 6) and '
                             'onnxruntime -> opset 17; with neither this nor --opset: 17')
    parser.add_argument('--opset', type=int, default=None,
                        help='ONNX opset, overrides --target: 16 (LayerNorm decomposed, '
                             'TorchScript exporter) or >= 17 (one LayerNormalization node, '
                             'dynamo exporter)')
    parser.add_argument('--no-fold', dest='fold', action='store_false',
                        help='opset 16: keep the TorchScript exporter\'s graph as written, '
                             'without folding its constant shape arithmetic (for debugging)')
    parser.add_argument('--cache-dir', default=None,
                        help='Hugging Face cache for hub downloads (default: the HF default)')
    parser.set_defaults(func=run)


def run(args) -> int:
    """Run the export; errors surface as ValueError/FileNotFoundError/ImportError."""
    from depth_ros.core.preprocess import check_input_size
    from depth_ros.inference.export import (check_opset, export_checkpoint, exporter_for,
                                            resolve_opset)

    # Validate the arguments before loading a checkpoint.
    check_input_size(args.width, args.height, names=('`--width`', '`--height`'))
    if not args.out.endswith('.onnx'):
        raise ValueError('--out must name an .onnx file, got {!r}'.format(args.out))
    opset = check_opset(resolve_opset(args.opset, args.target), name='--opset')
    info = export_checkpoint(
        args.checkpoint, args.out, variant=args.variant, random_weights=args.random_weights,
        seed=args.seed, input_size=(args.width, args.height), opset=opset,
        cache_dir=args.cache_dir, target=args.target, fold=args.fold)
    if args.random_weights:
        LOG.warning('%s holds an UNTRAINED %s network (random weights, seed %d): its output '
                    'is not a depth estimate', args.out, info['variant'], args.seed)
    LOG.info('exported %s (%s, source sha256 %s) at %dx%d, opset %d (%s exporter), to %s',
             info['source'], info['variant'], info['sha256'][:16], args.width, args.height,
             opset, exporter_for(opset), args.out)
    LOG.info('next, on the Jetson: depth-ros model build --onnx %s --precision fp16', args.out)
    return 0
