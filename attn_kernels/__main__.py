"""``python -m attn_kernels …`` is the ``attn-kernels`` command."""
import sys

from .cli import main

sys.exit(main())
