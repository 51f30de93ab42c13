"""Sub-commands of the `depth-ros` command line (see depth_ros/cli.py)."""
