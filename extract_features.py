"""Dense sliding-window features of your own videos (see ``lavila/extract.py`` and README "Your own videos").

    python extract_features.py --model MODEL --input videos/ --output-dir feats/ [--window 16 --stride 16]
"""
import sys

from lavila.extract import main

if __name__ == "__main__":
    sys.exit(main())
