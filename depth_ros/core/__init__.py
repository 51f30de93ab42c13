"""Pure core: numpy and OpenCV only. Never imports rclpy, torch, tensorrt, pycuda or pyzed."""
