"""
Pure core: numpy and OpenCV only. Never imports rclpy, torch, tensorrt, pycuda or pyzed.

Alignment and fusion: alignment.py (MetricAligner), alignment_options.py (its
options), robust_fit.py (the robust affine fit), bilateral_correction.py (the local correction:
a joint-bilateral normalised convolution of the stereo / mono ratio),
fusion.py (the noise models and the inverse-variance fusion), edges.py (depth
discontinuities of clouds), pointcloud.py (depth_to_cloud).
"""
