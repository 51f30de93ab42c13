"""`depth-ros process-bag IN OUT`: add metric depth, camera_info and clouds to a ZED rosbag2."""
from __future__ import annotations

import logging

from depth_ros.cli import HelpFormatter
from depth_ros.commands import _args

LOG = logging.getLogger('depth_ros.bag')


def register(subparsers) -> None:
    """Add the `process-bag` parser."""
    parser = subparsers.add_parser(
        'process-bag', help='run the pipeline over a ZED rosbag2 and write a new bag',
        description='Streams a rosbag2 (sqlite3 or mcap) of ZED topics (image, stereo depth, '
                    'confidence, camera_info), copies every message and adds OUT_NS/depth '
                    '(32FC1 m), OUT_NS/camera_info and OUT_NS/points (PointCloud2 xyz+rgb), '
                    'stamped like the input images. Needs no ROS install.',
        formatter_class=HelpFormatter)
    parser.add_argument('input', help='input bag folder')
    parser.add_argument('output', help='output bag folder (must not exist)')
    _args.add_model_arguments(
        parser, model_help='ONNX file, engine, checkpoint or hub id (Marigold: default '
                           'prs-eth/marigold-depth-v1-1)')
    parser.add_argument('--image-topic', default=None,
                        help='default: the topic ending in left/image_rect_color')
    parser.add_argument('--depth-topic', default=None,
                        help='default: the topic ending in depth/depth_registered')
    parser.add_argument('--confidence-topic', default=None,
                        help='default: the topic ending in confidence/confidence_map, if any')
    parser.add_argument('--camera-info-topic', default=None,
                        help='default: the topic ending in left/camera_info')
    parser.add_argument('--out-ns', default='/alignment_node',
                        help='namespace of the added topics')
    parser.add_argument('--cloud-stride', type=_args.positive_int, default=1,
                        help='cloud decimation')
    parser.add_argument('--max-pending', type=_args.positive_int, default=30,
                        help='stamps held while waiting for the other topics')
    parser.add_argument('--bag-version', type=int, default=8, choices=(8, 9),
                        help='rosbag2 metadata version of the output')
    parser.set_defaults(func=run)


def run(args) -> int:
    """Entry point of `depth-ros process-bag`."""
    from depth_ros.cli import CommandError
    from depth_ros.tools.bag import BagTopics, check_paths, check_topics, process_bag
    topics = BagTopics(image=args.image_topic, depth=args.depth_topic,
                       confidence=args.confidence_topic, camera_info=args.camera_info_topic)
    check_paths(args.input, args.output)   # before loading a model that may take a minute
    check_topics(args.input, topics)
    model = _args.load_model(args)
    try:
        stats = process_bag(args.input, args.output, model, topics, out_ns=args.out_ns,
                            cloud_stride=args.cloud_stride, max_pending=args.max_pending,
                            version=args.bag_version)
    except FileExistsError as exc:
        raise CommandError(str(exc))
    LOG.info('wrote %s: %d frames added on %s; fit status %s', args.output, stats.frames_out,
             ', '.join(stats.topics_out.values()), stats.status_counts)
    return 0
