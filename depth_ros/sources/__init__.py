"""Camera sources behind one interface (see depth_ros/sources/base.py)."""
