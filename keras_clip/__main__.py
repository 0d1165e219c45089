"""`python -m keras_clip`: the `keras-clip` command."""

import sys

from keras_clip.cli import main

if __name__ == "__main__":
    sys.exit(main())
