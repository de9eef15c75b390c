"""brainage: site-blind brain-age prediction from 3D MRI.

Subpackages: ``data`` (OpenBHB readers, simulator, preprocessing), ``models``, ``losses``,
``training``, ``harmonize``, ``evaluation``, ``debias``, ``submission``; ``cli`` is the
command line every workflow rule calls.
"""

__version__ = "0.1.0"
