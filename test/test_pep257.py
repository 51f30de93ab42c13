"""ament_pep257, as `colcon test` runs it on a ROS install (and here, from its PyPI wheel)."""
import pytest


@pytest.mark.linter
@pytest.mark.pep257
def test_pep257():
    main = pytest.importorskip(
        'ament_pep257.main', reason='ament_pep257 is not installed (ros-ament-pep257)')
    rc = main.main(argv=['.', 'test'])
    assert rc == 0, 'Found code style errors / warnings'
