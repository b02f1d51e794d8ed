"""Which files are videos, decided by their first bytes, not by their names.

OpenCV opens a still image as a one-frame "video", so a ``thumbnail.png`` in a class folder would
become a video of that class. A file is written only if it starts with the signature of a video
container (ffmpeg, which OpenCV decodes with, reads them all):

  MP4/MOV        an ISO base media box at byte 4: ``ftyp`` (ISO/IEC 14496-12 4.3), or in QuickTime
                 files without one ``moov``, ``mdat``, ``wide``, ``free``, ``skip``, ``pnot`` (Apple,
                 QuickTime File Format, "Atoms"); HEIF/AVIF still images, also ``ftyp``, are told
                 apart by their major brand (ISO/IEC 23008-12 Annex B; AV1 Image File Format 8.1)
  Matroska/WebM  the EBML header ID ``1A 45 DF A3`` (RFC 8794 8.1; RFC 9559)
  AVI            ``RIFF`` <size> ``AVI `` (Microsoft, AVI RIFF File Reference)
  MPEG-TS        the sync byte 0x47 at every 188-byte packet (ISO/IEC 13818-1 2.4.3.2); Blu-ray M2TS:
                 every 192 bytes from byte 4
  MPEG-PS        a pack header ``00 00 01 BA`` (ISO/IEC 13818-1 2.5.3.3), or an MPEG-1/2 video
                 sequence header ``00 00 01 B3`` (ISO/IEC 13818-2 6.2.2.1)
  FLV            ``FLV`` 01 (Adobe, Video File Format Specification 10.1, E.2)
  ASF/WMV        the Header Object GUID 75B22630-668E-11CF-A6D9-00AA0062CE6C (Microsoft, ASF
                 Specification 3.1)
  Ogg            ``OggS`` (RFC 3533 6)
  Y4M            ``YUV4MPEG2 `` (mjpegtools' and ffmpeg's raw YUV stream)
"""
from __future__ import annotations

HEAD_BYTES = 512  # enough for three MPEG-TS packets
KINDS = "MP4/MOV, Matroska/WebM, AVI, MPEG-TS/PS, FLV, ASF/WMV, Ogg, Y4M"
_ISO_BOXES = (b"ftyp", b"moov", b"mdat", b"wide", b"free", b"skip", b"pnot")
_STILL_BRANDS = (b"mif1", b"heic", b"heix", b"avif")
_ASF_GUID = bytes.fromhex("3026B2758E66CF11A6D900AA0062CE6C")
_PREFIXES = ((b"\x1a\x45\xdf\xa3", "Matroska/WebM"), (b"\x00\x00\x01\xba", "MPEG-PS"),
             (b"\x00\x00\x01\xb3", "MPEG-PS"), (b"FLV\x01", "FLV"), (_ASF_GUID, "ASF/WMV"),
             (b"OggS", "Ogg"), (b"YUV4MPEG2 ", "Y4M"))
# Files often found next to videos, named in the reason a file is skipped.
_OTHERS = ((b"\x89PNG\r\n\x1a\n", "a PNG image"), (b"\xff\xd8\xff", "a JPEG image"), (b"GIF8", "a GIF image"),
           (b"BM", "a BMP image"), (b"II*\x00", "a TIFF image"), (b"MM\x00*", "a TIFF image"),
           (b"%PDF", "a PDF document"), (b"PK\x03\x04", "a ZIP archive"))
_TEXT = frozenset(range(0x20, 0x7F)) | frozenset(b"\t\n\r") | frozenset(range(0x80, 0x100))


def container_of(head: bytes) -> str | None:
    """The kind of video container a file starting with ``head`` is (see the module's list), or None."""
    box = head[4:8]
    if box in _ISO_BOXES and not (box == b"ftyp" and head[8:12] in _STILL_BRANDS):
        return "MP4/MOV"
    if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
        return "AVI"
    for first in (0, 4):  # TS packets of 188 bytes, M2TS packets of a 4-byte timestamp and a TS packet
        step = 188 + first
        if len(head) >= first + 2 * step + 1 and all(head[i] == 0x47 for i in range(first, first + 3 * step, step)):
            return "MPEG-TS"
    return next((kind for prefix, kind in _PREFIXES if head.startswith(prefix)), None)


def not_a_video(head: bytes) -> str | None:
    """Why a file starting with ``head`` is not written as a video (None: it is a video container)."""
    if container_of(head):
        return None
    if not head:
        what = "an empty file"
    elif head[:4] == b"RIFF":
        what = f"a RIFF {head[8:12].decode('latin-1')!r} file"
    elif head[4:8] == b"ftyp":
        what = f"a HEIF/AVIF image (brand {head[8:12].decode('latin-1')!r})"
    else:
        what = next((w for prefix, w in _OTHERS if head.startswith(prefix)), None) \
            or ("text" if set(head) <= _TEXT else f"unknown content (starts {head[:8].hex(' ')})")
    return f"not a video: {what}, not a video container ({KINDS})"
