"""The reason codes a record can be rejected with, per stage: the only values ``Rejection.reason`` takes.

``Record.reject(stage, reason, detail)`` refuses a code that is not in its stage's list
(for the stages named here; a stage of another name may use any code). The human-readable
rest, such as a reviewer's comment or an exception, goes to ``detail``. ``error`` is the
runner's (``manifests.stage``): the stage raised on that record.
"""

from __future__ import annotations

from enum import StrEnum


class DownloadReason(StrEnum):
    """Why a download gave no usable body (``generators.download``)."""

    invalid_url = "invalid_url"  # not an absolute http(s) URL
    private_address = (
        "private_address"  # resolves to a loopback/private/link-local/multicast/reserved address
    )
    robots_disallowed = "robots_disallowed"  # robots.txt disallows the URL (or is unreachable)
    noai = "noai"  # X-Robots-Tag: noai / noimageai
    http_error = "http_error"  # a 4xx/5xx answer (5xx after retries), too many redirects, a protocol error
    connection_error = "connection_error"  # DNS failure, connection refused or reset
    timeout = "timeout"  # connect/read timeout or the total deadline, after retries
    too_large = "too_large"  # more bytes than max_bytes (or, for images, more pixels than max_pixels)
    content_encoding = "content_encoding"  # a Content-Encoding other than identity (never decoded)


class ScrapeReason(StrEnum):
    """Stage ``scrape``: every download reason, and what the scraper decides."""

    invalid_url = "invalid_url"
    private_address = "private_address"
    robots_disallowed = "robots_disallowed"
    noai = "noai"
    http_error = "http_error"
    connection_error = "connection_error"
    timeout = "timeout"
    too_large = "too_large"
    content_encoding = "content_encoding"
    licence = "licence"  # not on the allow-list, unrecognised, or unknown (no licence given)
    not_an_image = "not_an_image"  # the bytes are not a supported raster image (HTML, SVG, empty body...)
    corrupt = "corrupt"  # an image format that does not decode (truncated, damaged)
    too_small = "too_small"  # shorter side below min_side
    duplicate = "duplicate"  # same bytes or near-identical pixels as an image already stored
    error = "error"  # an unexpected error while processing this record (detail holds it)


class GenerateReason(StrEnum):
    """Stage ``generate``."""

    out_of_memory = "out_of_memory"
    generation_error = "generation_error"
    blank_image = "blank_image"  # one flat colour: NaNs in half precision decode to black
    error = "error"


class LocalizeReason(StrEnum):
    """Stage ``localize``."""

    image_unreadable = "image_unreadable"
    model_error = "model_error"
    unparseable = "unparseable"  # the answer holds no JSON list of boxes
    no_box = "no_box"  # a concept without a usable box
    error = "error"


class SegmentReason(StrEnum):
    """Stage ``segment``."""

    no_box = "no_box"
    image_unreadable = "image_unreadable"
    model_error = "model_error"
    error = "error"


class QualityReason(StrEnum):
    """Stage ``quality``: the gate's checks (``annotators.quality``), in their order."""

    missing_mask = "missing_mask"
    low_sam_score = "low_sam_score"
    same_object = "same_object"
    masks_overlap = "masks_overlap"
    mask_outside_box = "mask_outside_box"
    mask_underfills_box = "mask_underfills_box"
    mask_too_small = "mask_too_small"
    vlm_disagrees = "vlm_disagrees"
    unreadable = "unreadable"  # the stored masks could not be read for a re-check
    gate_error = "gate_error"  # the second look's model failed
    error = "error"


class ReviewReason(StrEnum):
    """Stage ``review``: a reviewer's verdict, or a submitted annotation that cannot be used."""

    wrong_concept = "wrong_concept"  # the reviewer's reasons (annotators.labelstudio_format.REJECT_REASONS)
    concept_missing = "concept_missing"
    duplicate_image = "duplicate_image"
    unusable_image = "unusable_image"
    other = "other"
    rejected_by_reviewer = (
        "rejected_by_reviewer"  # a reject without a chosen reason (a project made before them)
    )
    mask_missing = "mask_missing"  # a concept without a mask in the submitted annotation
    mask_size_mismatch = "mask_size_mismatch"
    mask_undecodable = "mask_undecodable"
    error = "error"


REASONS: dict[str, type[StrEnum]] = {
    "scrape": ScrapeReason,
    "generate": GenerateReason,
    "localize": LocalizeReason,
    "segment": SegmentReason,
    "quality": QualityReason,
    "review": ReviewReason,
}
"""The reason codes of each stage, by the stage name that ``Rejection.stage`` holds."""


def check_reason(stage: str, reason: str) -> str:
    """``reason`` if it is one of ``stage``'s codes (or ``stage`` is not listed); else ValueError naming them."""
    codes = REASONS.get(stage)
    if codes is not None and reason not in codes.__members__:
        raise ValueError(
            f"{reason!r} is not a reason code of stage {stage!r}; use one of {list(codes.__members__)} "
            "(put the human-readable rest in detail)"
        )
    return reason
