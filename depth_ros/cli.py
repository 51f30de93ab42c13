"""
`depth-ros` command line: demo, fuse, model export|build|verify, bench, eval, process-bag.

Each sub-command lives in ``depth_ros/commands/<name>.py`` and exposes ``register(subparsers)``,
which adds its parser and sets ``func``. Modules import only light dependencies at the top, so
``depth-ros --help`` is fast; heavy imports happen inside ``func``.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys
from typing import List, Optional

import depth_ros

# Order is the order shown in --help.
COMMANDS = ('demo', 'fuse', 'model', 'bench', 'eval', 'process_bag')


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Show a default only where it says something (not None or False, not already in help)."""

    def _get_help_string(self, action):
        text = action.help or ''
        flag = isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction))
        if flag or action.default in (None, argparse.SUPPRESS) or 'default' in text:
            return text
        return super(HelpFormatter, self)._get_help_string(action)


class CommandError(Exception):
    """A user-facing error: printed as one line, exit status 2, no traceback."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog='depth-ros',
        description='Metric depth from ZED2 stereo and Depth Anything V2, without ROS.')
    parser.add_argument('--debug', action='store_true',
                        help='debug logging, and full tracebacks on errors')
    # `depth-ros --version` said "the following arguments are required: COMMAND".
    parser.add_argument('--version', action='version',
                        version='depth-ros {}'.format(depth_ros.__version__))
    sub = parser.add_subparsers(dest='command', metavar='COMMAND')
    sub.required = True
    for name in COMMANDS:
        try:
            module = importlib.import_module('depth_ros.commands.' + name)
        except ImportError as exc:  # a command whose module is missing must not break the rest
            logging.getLogger('depth_ros').debug('command %s unavailable: %s', name, exc)
            continue
        module.register(sub)
    _debug_after_the_command(sub)
    return parser


def _debug_after_the_command(subparsers) -> None:
    # `depth-ros eval ... --debug` was refused ("unrecognized arguments: --debug"): --debug
    # is also taken after the command (hidden there; not given, it leaves the global value).
    for command in subparsers.choices.values():
        nested = [a for a in command._actions if isinstance(a, argparse._SubParsersAction)]
        if nested:
            _debug_after_the_command(nested[0])
        else:
            command.add_argument('--debug', action='store_true', default=argparse.SUPPRESS,
                                 help=argparse.SUPPRESS)


def main(argv: Optional[List[str]] = None) -> int:
    try:
        parser = build_parser()   # imports the commands (0.2 s): Ctrl-C here is quiet too
        args = parser.parse_args(argv)
    except KeyboardInterrupt:
        return 130
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.INFO,
                        format='%(levelname)s %(name)s: %(message)s')
    for note in getattr(args, 'deprecations', None) or ():   # old option spellings
        logging.getLogger('depth_ros').warning(note)
    try:
        return int(args.func(args) or 0)
    except (CommandError, ValueError, OSError, ImportError, RuntimeError) as exc:
        if args.debug:
            raise
        prog = 'depth-ros ' + args.command.replace('_', '-')
        if getattr(args, 'action', None):
            prog += ' ' + args.action
        print('{}: error: {}'.format(prog, exc), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == '__main__':
    # Run the importable module's main: commands raise depth_ros.cli.CommandError, which is
    # not the class this __main__ copy defines.
    from depth_ros.cli import main as _main
    sys.exit(_main())
