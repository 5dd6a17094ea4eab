"""Draws a synthetic 1280x720 camera frame (a room, a sofa, a dog-shaped figure) as JPEG.

`make run` asks questions about it; no photo is shipped and nothing is downloaded.
"""

import sys

from PIL import Image, ImageDraw, ImageFilter


def main(path: str) -> None:
    w, h = 1280, 720
    img = Image.new("RGB", (w, h), (196, 186, 170))
    d = ImageDraw.Draw(img)
    d.rectangle([0, int(h * 0.62), w, h], fill=(120, 92, 64))  # floor
    d.rectangle([80, 300, 620, 520], fill=(70, 90, 140))  # sofa
    d.rectangle([80, 250, 620, 330], fill=(60, 80, 128))
    d.ellipse([760, 420, 1040, 600], fill=(150, 110, 60))  # dog body
    d.ellipse([980, 360, 1110, 470], fill=(140, 100, 55))  # head
    d.polygon([(1000, 370), (1020, 320), (1045, 372)], fill=(110, 80, 45))  # ear
    for x in (790, 850, 960, 1010):
        d.rectangle([x, 570, x + 28, 660], fill=(140, 100, 55))  # legs
    d.rectangle([1100, 80, 1240, 300], fill=(235, 240, 250))  # window
    img = img.filter(ImageFilter.GaussianBlur(1.2))
    img.save(path, quality=90)


if __name__ == "__main__":
    main(sys.argv[1])
