"""The review stage's own logic without a server: what a task holds, how a submitted annotation is read
and applied, which annotation is the latest, and the pull's decisions over listed tasks.

The Label Studio client is replaced by a small object answering the three calls pull makes
(``projects.list``, ``tasks.list``, ``users.get``) with task dicts in the shape the server returns;
``test_review_labelstudio.py`` runs the same paths against the real server. These tests need no
server, so the mutation pass (``make mutants``) can run them per mutant.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from review_records import disk_masks, make_segmented

from annotators import labelstudio_format as fmt
from annotators import review
from manifests.masks import decode_mask, encode_mask
from manifests.record import SAM_SCORE, Record, State
from manifests.store import ManifestStore

WIDTH, HEIGHT = 96, 64
PROJECT = 7


@pytest.fixture
def store(tmp_path):
    return ManifestStore(tmp_path / "work")


def in_review(store, record_id="r1", concepts=("husky", "wolf"), task=11) -> Record:
    """A segmented record pushed as ``task`` of project ``PROJECT`` (as ReviewPush leaves it)."""
    record = make_segmented(store, record_id, concepts=concepts, size=(WIDTH, HEIGHT))
    record.review_task = task
    record.advance(
        State.in_review, review.STAGE, params={"action": "push", "project_id": PROJECT, "task": task}
    )
    return record


def machine(record: Record, name: str) -> np.ndarray:
    return decode_mask(next(c for c in record.concepts if c.name == name).mask)


def verdict(choice: str) -> dict:
    return {"type": "choices", "from_name": fmt.VERDICT, "to_name": fmt.IMAGE, "value": {"choices": [choice]}}


def reason(text: str) -> dict:
    return {
        "type": "choices",
        "from_name": fmt.REJECT_REASON,
        "to_name": fmt.IMAGE,
        "value": {"choices": [text]},
    }


def comment(text: str) -> dict:
    return {"type": "textarea", "from_name": fmt.COMMENT, "to_name": fmt.IMAGE, "value": {"text": [text]}}


def annotation(results, *, id=101, updated="2026-12-01T10:00:00Z", created="2026-12-01T09:00:00Z", who=None,
               lead_time=12.5):  # fmt: skip
    return {"id": id, "result": results, "updated_at": updated, "created_at": created, "completed_by": who,
            "was_cancelled": False, "lead_time": lead_time}  # fmt: skip


def accepted_as_is(record: Record) -> list[dict]:
    return [fmt.brush_result(c.name, decode_mask(c.mask), f"m{i}") for i, c in enumerate(record.concepts)]


def apply(record, results, *, accept_iou=review.ACCEPT_IOU, revised=False, **kwargs):
    report = review.PullReport(project_id=PROJECT)
    review._apply(record, annotation(results, **kwargs), "ann@example.org", PROJECT, accept_iou, report,
                  revised=revised)  # fmt: skip
    return report


# -- push: what a task holds -------------------------------------------------------------------------
def test_a_task_holds_the_records_data_scores_masks_and_boxes(store):
    record = make_segmented(store, "r1", concepts=("husky", "wolf", "alaskan malamute"), size=(WIDTH, HEIGHT))
    record.concepts[1].boxes.append((1.0, 2.0, 30.0, 40.0))
    task = review._task(record, store, "/data/local-files/?d=images/r1.png")
    data = task["data"]
    assert data["image"] == "/data/local-files/?d=images/r1.png" and data["record_id"] == "r1"
    assert data["group"] == "husky-wolf" and data["concepts"] == "husky, wolf, alaskan malamute"
    assert data["score"] == pytest.approx(0.7) and data["scores"] == {
        "husky": pytest.approx(0.9), "wolf": pytest.approx(0.8), "alaskan malamute": pytest.approx(0.7),
    }  # fmt: skip
    masks = disk_masks(HEIGHT, WIDTH, 3)
    assert data["mask_share"] == {
        c.name: round(float(m.mean()), 4) for c, m in zip(record.concepts, masks, strict=True)
    }
    (prediction,) = task["predictions"]
    assert prediction["model_version"] == review.MODEL_VERSION and prediction["score"] == pytest.approx(0.7)
    ids = [r["id"] for r in prediction["result"]]
    assert ids == ["m0", "b0_0", "m1", "b1_0", "b1_1", "m2", "b2_0"]
    brushes = fmt.read_annotation(prediction["result"]).brushes
    for concept, mask in zip(record.concepts, masks, strict=True):
        (stroke,) = brushes[concept.name]
        assert np.array_equal(fmt.decode_brush(stroke, HEIGHT, WIDTH), mask)
    rectangles = fmt.read_annotation(prediction["result"]).rectangles["wolf"]
    got = [fmt.rectangle_box(r, WIDTH, HEIGHT) for r in rectangles]
    assert np.allclose(got, record.concepts[1].boxes, atol=1e-6)

    record.concepts[0].mask = encode_mask(np.zeros((HEIGHT + 1, WIDTH), bool))
    with pytest.raises(ValueError, match="mask of husky is"):
        review._task(record, store, "x")


def test_a_record_without_scores_gets_no_task_score_and_pushable_checks_name_what_is_missing(store):
    record = make_segmented(store, "r1", size=(WIDTH, HEIGHT))
    record.concepts[1].scores.pop(SAM_SCORE)
    assert review.task_score(record) is None
    record.concepts[1].mask = None
    with pytest.raises(ValueError, match=r"no mask for \['wolf'\]"):
        review._check_pushable(record)
    record.image = None
    with pytest.raises(ValueError, match="has no image"):
        review._check_pushable(record)
    review._check_pushable(make_segmented(store, "r2", size=(WIDTH, HEIGHT)))  # a complete record passes


# -- pull: reading and applying one annotation ---------------------------------------------------------
def test_an_unchanged_annotation_accepts_every_mask_and_logs_who_and_when(store):
    record = in_review(store)
    before = {c.name: c.mask for c in record.concepts}
    report = apply(record, [*accepted_as_is(record), verdict("accept")])
    assert record.state == State.reviewed and report.reviewed == 1 and report.rejected == 0
    assert all(c.review == "accepted" and c.mask == before[c.name] for c in record.concepts)
    event = record.history[-1]
    assert event.stage == review.STAGE and event.note == "reviewed by ann@example.org"
    assert event.params == {
        "action": "pull", "project_id": PROJECT, "task": 11, "annotation": 101, "reviewer": "ann@example.org",
        "reviewed_at": "2026-12-01T10:00:00Z", "revised": False, "lead_time": 12.5, "verdict": "accept",
        "iou": {"husky": 1.0, "wolf": 1.0}, "review": {"husky": "accepted", "wolf": "accepted"},
        "boxes_edited": [], "comment": None, "ignored_labels": None,
    }  # fmt: skip


def test_the_accept_iou_bound_is_inclusive_and_an_edit_replaces_the_mask(store):
    """The reviewer keeps the top half of the husky mask, IoU = |top| / |machine|: accepted (machine mask
    kept) when accept_iou equals that IoU, edited (the reviewed mask replaces it) just above."""
    for extra, expected in ((0.0, "accepted"), (1e-3, "edited")):
        record = in_review(store, record_id=f"r-{expected}")
        husky = machine(record, "husky")
        rows = np.nonzero(husky.any(axis=1))[0]
        top = husky.copy()
        top[rows[len(rows) // 2] :] = False
        iou = float(top.sum() / husky.sum())
        assert 0.3 < iou < 0.7
        results = [fmt.brush_result("husky", top, "a"), fmt.brush_result("wolf", machine(record, "wolf"), "b"),
                   verdict("accept")]  # fmt: skip
        report = apply(record, results, accept_iou=iou + extra)
        assert record.state == State.reviewed and report.reviewed == 1
        assert record.concepts[0].review == expected and record.concepts[1].review == "accepted"
        assert np.array_equal(machine(record, "husky"), husky if expected == "accepted" else top)
        assert record.history[-1].params["iou"] == {"husky": round(iou, 6), "wolf": 1.0}
        assert record.history[-1].params["review"] == {"husky": expected, "wolf": "accepted"}


def test_several_strokes_of_one_label_are_one_mask(store):
    record = in_review(store)
    husky = machine(record, "husky")
    left, right = husky.copy(), husky.copy()
    left[:, WIDTH // 6 :] = False
    right[:, : WIDTH // 6] = False
    assert left.any() and right.any()
    results = [fmt.brush_result("husky", left, "a"), fmt.brush_result("husky", right, "b"),
               fmt.brush_result("wolf", machine(record, "wolf"), "c"), verdict("accept")]  # fmt: skip
    apply(record, results)
    assert record.concepts[0].review == "accepted" and np.array_equal(machine(record, "husky"), husky)
    alone = in_review(store, "r2")
    apply(alone, results[1:])  # the right half alone is an edit
    assert alone.concepts[0].review == "edited" and np.array_equal(machine(alone, "husky"), right)


def test_a_reject_takes_the_chosen_reasons_code_and_the_comment_as_detail(store):
    record = in_review(store)
    report = apply(record, [verdict("reject"), reason("wrong concept"), comment("  that is a fox ")])
    assert record.state == State.rejected and report.rejected == 1 and report.reviewed == 0
    assert (record.rejection.stage, record.rejection.reason) == ("review", "wrong_concept")
    assert record.rejection.detail == "rejected by ann@example.org: that is a fox"
    params = record.history[-1].params
    assert params["verdict"] == "reject" and params["reject_reason"] == "wrong_concept"
    assert params["comment"] == "that is a fox" and params["annotation"] == 101
    older = in_review(store, "r2")
    apply(older, [verdict("reject")])
    assert older.rejection.reason == "rejected_by_reviewer"
    assert older.rejection.detail == "rejected by ann@example.org: (no comment)"


def test_unusable_annotations_reject_with_the_first_problem_and_keep_the_usable_masks(store):
    record = in_review(store)
    wolf = machine(record, "wolf")
    wolf[: HEIGHT // 2] = False  # an edit of the wolf: kept even though the record is rejected
    report = apply(record, [fmt.brush_result("wolf", wolf, "w"), verdict("accept")])
    assert record.state == State.rejected and report.rejected == 1
    assert record.rejection.reason == "mask_missing"
    assert record.rejection.detail == "husky: no mask in the submitted annotation"
    assert record.concepts[1].review == "edited" and np.array_equal(machine(record, "wolf"), wolf)

    small = in_review(store, "r2")
    bad_size = fmt.brush_result("husky", np.ones((HEIGHT, WIDTH + 2), bool), "a")
    corrupt = fmt.brush_result("wolf", machine(small, "wolf"), "b")
    corrupt["value"]["rle"] = [3, 1, 4]
    apply(small, [bad_size, corrupt, verdict("accept")])
    assert small.rejection.reason == "mask_size_mismatch"
    detail = small.rejection.detail
    assert detail.startswith(
        "husky: brush result is 98x64, the image is 96x64; wolf: brush RLE does not decode"
    )


def test_labels_of_other_concepts_are_ignored_with_a_warning_and_boxes_follow_real_edits(store):
    record = in_review(store)
    stray = fmt.brush_result("malamute", machine(record, "husky"), "x")
    husky_box = record.concepts[0].boxes[0]
    moved = (husky_box[0] + 5.0, husky_box[1], husky_box[2] + 5.0, husky_box[3])
    nudged = tuple(v + 0.4 for v in record.concepts[1].boxes[0])  # within the 0.5 px tolerance
    results = [*accepted_as_is(record), stray, verdict("accept"),
               fmt.rectangle_result("husky", moved, WIDTH, HEIGHT, "b0"),
               fmt.rectangle_result("wolf", nudged, WIDTH, HEIGHT, "b1")]  # fmt: skip
    wolf_box = record.concepts[1].boxes[0]
    report = apply(record, results)
    assert record.state == State.reviewed
    assert report.warnings == ["task 11: labels ['malamute'] are not concepts of r1; ignored"]
    assert record.history[-1].params["ignored_labels"] == ["malamute"]
    assert record.history[-1].note == "reviewed by ann@example.org; ignored labels ['malamute']"
    assert np.allclose(record.concepts[0].boxes, [moved], atol=1e-6) and record.concepts[1].boxes == [
        wolf_box
    ]
    assert record.history[-1].params["boxes_edited"] == ["husky"]


def test_a_revised_annotation_is_logged_as_a_revision(store):
    record = in_review(store)
    apply(record, [*accepted_as_is(record), verdict("accept")], revised=True, updated=None)
    event = record.history[-1]
    assert event.note == "revised review by ann@example.org" and event.params["revised"] is True
    assert event.params["reviewed_at"] == "2026-12-01T09:00:00Z"  # created_at when never updated


def test_box_comparison_is_order_free_within_half_a_pixel():
    a = [(0.0, 0.0, 10.0, 10.0), (20.0, 20.0, 30.0, 30.0)]
    assert review._same_boxes(a, list(reversed(a)))
    assert review._same_boxes(a, [(0.5, 0.0, 10.0, 10.0), a[1]])
    assert not review._same_boxes(a, [(0.51, 0.0, 10.0, 10.0), a[1]])
    assert not review._same_boxes(a, a[:1]) and review._same_boxes([], [])


# -- pull: which annotation, which version -------------------------------------------------------------
def test_the_latest_submitted_annotation_wins_and_skipped_ones_never_count():
    first = annotation([], id=2, updated="2026-12-01T10:00:00Z")
    later = annotation([], id=1, updated="2026-12-02T10:00:00Z")  # updated last, though created first
    skipped = {**annotation([], id=3, updated="2026-12-03T10:00:00Z"), "was_cancelled": True}
    assert review._submitted({"annotations": [later, first, skipped]}) is later
    assert review._submitted({"annotations": [skipped]}) is None and review._submitted({}) is None
    tie_a, tie_b = annotation([], id=4, updated=None), annotation([], id=5, updated=None)  # same created_at
    assert review._submitted({"annotations": [tie_b, tie_a]}) is tie_b
    assert review._annotation_key(later) == (1, "2026-12-02T10:00:00Z")
    assert review._annotation_key(tie_a) == (4, "2026-12-01T09:00:00Z")
    assert review._annotation_key({"id": None}) == (None, "")


def test_the_applied_version_is_the_last_pulls_and_a_new_push_forgets_it(store):
    record = in_review(store)
    assert review._applied(record) is None and review._pushed_project(record) == PROJECT
    apply(record, [*accepted_as_is(record), verdict("accept")], id=42, updated="2026-12-05T00:00:00Z")
    assert review._applied(record) == (42, "2026-12-05T00:00:00Z")
    record.state = State.segmented  # sent back to review (as a deleted task does), then pushed again
    record.advance(State.in_review, review.STAGE, params={"action": "push", "project_id": 9, "task": 12})
    assert review._applied(record) is None and review._pushed_project(record) == 9
    bare = make_segmented(store, "r9", size=(WIDTH, HEIGHT))
    assert review._pushed_project(bare) is None and review._applied(bare) is None


def test_prediction_masks_are_the_union_of_each_concepts_strokes(store):
    record = in_review(store)
    husky = machine(record, "husky")
    half = husky.copy()
    half[: HEIGHT // 2] = False
    task = {"predictions": [{"result": [fmt.brush_result("husky", husky & ~half, "a"),
                                        fmt.brush_result("husky", half, "b"),
                                        fmt.brush_result("wolf", machine(record, "wolf"), "c")]}]}  # fmt: skip
    masks = review._prediction_masks(task, record)
    assert set(masks) == {"husky", "wolf"} and np.array_equal(masks["husky"], husky)
    assert np.array_equal(masks["wolf"], machine(record, "wolf"))
    assert review._prediction_masks({"predictions": None}, record) == {}


def test_the_reviewer_is_named_by_email_from_the_annotation_or_the_users_api_once():
    calls = []

    def get(user_id):
        calls.append(user_id)
        if user_id == 13:
            raise RuntimeError("gone")
        return SimpleNamespace(email=f"user{user_id}@example.org" if user_id != 12 else None)

    client = SimpleNamespace(users=SimpleNamespace(get=get))
    cache: dict[int, str] = {}
    assert review._reviewer(client, {"completed_by": {"id": 3, "email": "a@b.c"}}, cache) == "a@b.c"
    assert review._reviewer(client, {"completed_by": {"id": 3, "email": ""}}, cache) == "3"
    assert review._reviewer(client, {"completed_by": None}, cache) == "unknown"
    assert review._reviewer(client, {"completed_by": 5}, cache) == "user5@example.org"
    assert review._reviewer(client, {"completed_by": 5}, cache) == "user5@example.org"
    assert review._reviewer(client, {"completed_by": 12}, cache) == "12"
    assert review._reviewer(client, {"completed_by": 13}, cache) == "13"
    assert calls == [5, 12, 13]


# -- pull over listed tasks ----------------------------------------------------------------------------
class Client:
    """Answers the calls ReviewPull makes with fixed projects and task dicts."""

    def __init__(self, tasks: list[dict], projects=((PROJECT, review.DEFAULT_PROJECT),), annotators=1):
        self._tasks, self._projects = tasks, projects
        self.users = SimpleNamespace(get=lambda user_id: SimpleNamespace(email=f"u{user_id}@example.org"))
        self.projects = SimpleNamespace(
            list=self._list_projects, get=lambda project_id: SimpleNamespace(maximum_annotations=annotators)
        )
        self.tasks = SimpleNamespace(list=self._list_tasks, update=self._update_task)
        self.listed: list[dict] = []
        self.updated: list[tuple[str, dict]] = []

    def _update_task(self, task_id, **fields):
        self.updated.append((task_id, fields))

    def _list_projects(self, *, title, page_size):
        return [SimpleNamespace(id=i, title=t) for i, t in self._projects if t == title]

    def _list_tasks(self, **kwargs):
        self.listed.append(kwargs)
        return list(self._tasks)


def test_pull_decides_pending_deleted_reused_and_revised_tasks(store):
    pending, deleted, reused, done, revised, submitted = (
        in_review(store, f"r{i}", task=20 + i) for i in range(6)
    )
    for record in (done, revised):
        apply(record, [*accepted_as_is(record), verdict("accept")], id=900 + int(record.id[1:]),
              updated="2026-12-01T00:00:00Z")  # fmt: skip
    edit = machine(revised, "husky")
    edit[:, : WIDTH // 4] = False
    tasks = [
        {"id": 20, "data": {"record_id": "r0"}, "annotations": []},
        {"id": 22, "data": {"record_id": "someone-else"}, "annotations": []},
        {"id": 23, "data": {"record_id": "r3"}, "annotations": [annotation([], id=903, updated="2026-12-01T00:00:00Z")]},
        {"id": 24, "data": {"record_id": "r4"},
         "predictions": [{"result": accepted_as_is(revised)}],
         "annotations": [annotation([fmt.brush_result("husky", edit, "a"),
                                     fmt.brush_result("wolf", machine(revised, "wolf"), "b"), verdict("accept")],
                                    id=904, updated="2026-12-02T00:00:00Z", who=8)]},
        {"id": 25, "data": {"record_id": "r5"},
         "annotations": [annotation([verdict("reject"), reason("duplicate image")], id=905, who={"email": "c@d.e"})]},
    ]  # fmt: skip
    client = Client(tasks)
    stage = review.ReviewPull(client, "http://ls")
    assert stage.report.project_id == PROJECT
    batch = [pending, deleted, reused, done, revised, submitted]
    assert all(stage.takes(r) for r in batch)
    outputs = stage.run(batch, store)
    assert client.listed == [{"project": PROJECT, "fields": "all", "page_size": 500}]
    assert [o.record for o in outputs] == batch
    assert [o.unchanged for o in outputs] == [True, False, False, True, False, False]
    assert submitted.state == State.rejected and submitted.rejection.reason == "duplicate_image"
    assert submitted.history[-1].params["reviewer"] == "c@d.e" and stage.report.rejected == 1
    assert pending.state == State.in_review and stage.report.pending == 1
    for record, old in ((deleted, 21), (reused, 22)):
        assert record.state == State.segmented and record.review_task is None
        assert record.history[-1].params == {"action": "pull", "project_id": PROJECT, "task": old}
    assert stage.report.returned == 2
    assert revised.state == State.reviewed and stage.report.revised == 1
    assert revised.concepts[0].review == "edited" and np.array_equal(machine(revised, "husky"), edit)
    event = revised.history[-1]
    assert event.params["revised"] is True and event.params["annotation"] == 904
    assert event.params["reviewer"] == "u8@example.org"

    with pytest.raises(review.LabelStudioUnavailable, match="no project named 'other'"):
        review.ReviewPull(client, "http://ls/", project="other")
    elsewhere = in_review(store, "r9")
    elsewhere.history[-1].params["project_id"] = 99
    assert not stage.takes(elsewhere)
    assert not stage.takes(make_segmented(store, "r10", size=(WIDTH, HEIGHT)))


# -- several annotators per task ----------------------------------------------------------------------
def half_husky(record: Record) -> list[dict]:
    """An accept whose husky mask is the machine mask's left half (IoU about 0.5 with it)."""
    husky = machine(record, "husky")
    columns = np.nonzero(husky.any(axis=0))[0]
    husky[:, (columns.min() + columns.max()) // 2 :] = False
    return [fmt.brush_result("husky", husky, "h"), fmt.brush_result("wolf", machine(record, "wolf"), "w"),
            verdict("accept")]  # fmt: skip


def test_consensus_applies_the_newest_of_the_best_agreeing_annotators(store):
    record = in_review(store)
    same_a = annotation(
        [*accepted_as_is(record), verdict("accept")], id=1, who=1, updated="2026-12-01T01:00:00Z"
    )
    same_b = annotation(
        [*accepted_as_is(record), verdict("accept")], id=2, who=2, updated="2026-12-01T02:00:00Z"
    )
    half = annotation(half_husky(record), id=3, who=3, updated="2026-12-01T03:00:00Z")
    rejects = [annotation([verdict("reject"), reason("unusable image")], id=i, who=i) for i in (4, 5)]

    chosen, agreement = review.consensus([same_b, same_a], record, 2)
    assert chosen is same_b and agreement == {"score": 1.0, "annotations": [2, 1], "verdicts": ["accept"] * 2,
                                              "iou": {"husky": 1.0, "wolf": 1.0}}  # fmt: skip
    chosen, agreement = review.consensus([half, same_b], record, 2)
    assert chosen is None and 0.4 < agreement["iou"]["husky"] < 0.6 and agreement["iou"]["wolf"] == 1.0
    assert agreement["score"] == agreement["iou"]["husky"]
    assert review.consensus([half, same_b], record, 2, agreement_iou=0.4)[0] is half  # a looser threshold
    # a third annotator who agrees with one of the two: that pair decides, its newest annotation applies
    chosen, agreement = review.consensus([half, same_b, same_a], record, 2)
    assert chosen is same_b and agreement["annotations"] == [2, 1] and agreement["score"] == 1.0
    assert review.consensus([half, same_b, same_a], record, 3)[0] is None  # all three must agree
    same_c = annotation(
        [*accepted_as_is(record), verdict("accept")], id=6, who=6, updated="2026-12-01T04:00:00Z"
    )
    assert review.consensus([same_c, same_b, same_a], record, 2)[0] is same_c  # ties: the newest group
    # verdicts: accept vs reject never agree; two rejects do (no masks to compare)
    assert review.consensus([rejects[0], same_a], record, 2)[1]["score"] == 0.0
    chosen, agreement = review.consensus(rejects, record, 2)
    assert chosen is rejects[0] and agreement["iou"] == {} and agreement["verdicts"] == ["reject"] * 2
    with pytest.raises(ValueError, match="needs 2 annotations, got 1"):
        review.consensus([same_a], record, 2)


@pytest.mark.parametrize("title", ["", "p1", "x" * 51])
def test_a_project_title_label_studio_would_refuse_is_refused_first(title):
    with pytest.raises(ValueError, match="3 to 50 characters"):
        review.ReviewPush(None, "http://ls", "token", project=title)


@pytest.mark.parametrize("bad", [0, 11, 1.5, True, "2"])
def test_annotations_per_task_must_be_an_integer_from_1_to_10(bad):
    with pytest.raises((ValueError, TypeError), match="annotators|int"):
        review.ReviewPush(None, "http://ls", "token", annotators=bad)


def test_pull_with_two_annotators_waits_then_sends_a_disagreement_back_once_then_decides(store):
    waiting, split, agreed = (in_review(store, f"r{i}", task=40 + i) for i in range(3))
    first = annotation(
        [*accepted_as_is(split), verdict("accept")], id=11, who=1, updated="2026-12-01T01:00:00Z"
    )
    tasks = [
        {"id": 40, "data": {"record_id": "r0"}, "annotations": [first]},
        {"id": 41, "data": {"record_id": "r1"},
         "annotations": [first, annotation(half_husky(split), id=12, who=2, updated="2026-12-01T02:00:00Z")]},
        {"id": 42, "data": {"record_id": "r2"},
         "annotations": [annotation([*accepted_as_is(agreed), verdict("accept")], id=i, who=i,
                                    updated=f"2026-12-01T0{i - 20}:00:00Z") for i in (21, 22)]},
    ]  # fmt: skip
    client = Client(tasks, annotators=2)
    stage = review.ReviewPull(client, "http://ls")
    assert stage.needed == 2
    outputs = stage.run([waiting, split, agreed], store)
    assert [o.unchanged for o in outputs] == [True, False, False]
    assert waiting.state == State.in_review and stage.report.pending == 1  # one of two annotators so far
    assert split.state == State.in_review and stage.report.disagreed == 1
    assert client.updated == [("41", {"overlap": 3})]  # one more annotator gets the task
    event = split.history[-1]
    assert event.params["action"] == "disagreement" and event.params["submitted"][0][0] == 12
    assert 0.4 < event.params["agreement"]["iou"]["husky"] < 0.6
    assert agreed.state == State.reviewed and stage.report.reviewed == 1
    decided = agreed.history[-1].params
    assert decided["annotation"] == 22 and decided["agreement"]["score"] == 1.0
    assert decided["agreement"]["reviewers"] == ["u22@example.org", "u21@example.org"]
    # the same annotations again: nothing new to say, nothing sent
    again = review.ReviewPull(client, "http://ls").run([split], store)
    assert again[0].unchanged and client.updated == [("41", {"overlap": 3})]

    from annotators.review_stats import compute_stats

    inter = compute_stats([waiting, split, agreed])["inter_annotator"]
    assert inter["records_decided_by_agreement"] == 1 and inter["records_with_disagreement"] == 1
    assert inter["waiting_for_another_annotation"] == 1
    assert inter["iou_by_concept"] == {"husky": {"masks": 1, "mean_iou": 1.0, "min_iou": 1.0},
                                       "wolf": {"masks": 1, "mean_iou": 1.0, "min_iou": 1.0}}  # fmt: skip
    assert inter["iou_by_group"]["husky-wolf"]["masks"] == 2

    # a third annotator agrees with the first: the pair decides, and the record no longer waits
    tasks[1]["annotations"].append(
        annotation([*accepted_as_is(split), verdict("accept")], id=13, who=3, updated="2026-12-01T03:00:00Z")
    )
    review.ReviewPull(client, "http://ls").run([split], store)
    assert split.state == State.reviewed and split.history[-1].params["agreement"]["annotations"] == [13, 11]
    inter = compute_stats([waiting, split, agreed])["inter_annotator"]
    assert inter["records_with_disagreement"] == 1 and inter["waiting_for_another_annotation"] == 0
    assert inter["records_decided_by_agreement"] == 2


# -- statistics ----------------------------------------------------------------------------------------
def test_review_stats_report_box_edits_iou_per_concept_time_per_task_and_each_annotator(store):
    """Four decided records by two reviewers (lead_time 10, 20, 60 s and one without): box edits counted
    per concept, IoU per concept, the mean and median time per task, and per reviewer what they decided."""
    from annotators.review_stats import compute_stats

    def decide(record, results, who, lead_time):
        review._apply(record, annotation(results, lead_time=lead_time), who, PROJECT, 0.98,
                      review.PullReport(project_id=PROJECT))  # fmt: skip

    kept = in_review(store, "r1")
    husky_box = kept.concepts[0].boxes[0]
    moved = (husky_box[0] + 4.0, *husky_box[1:])
    decide(kept, [*accepted_as_is(kept), fmt.rectangle_result("husky", moved, WIDTH, HEIGHT, "b"), verdict("accept")],
           "ann", 10.0)  # fmt: skip
    edited = in_review(store, "r2")
    half = machine(edited, "wolf")
    half[: HEIGHT // 2] = False
    wolf_iou = fmt.iou(machine(edited, "wolf"), half)
    decide(edited, [fmt.brush_result("husky", machine(edited, "husky"), "a"), fmt.brush_result("wolf", half, "b"),
                    verdict("accept")], "bob", 20.0)  # fmt: skip
    thrown = in_review(store, "r3")
    decide(thrown, [verdict("reject"), reason("unusable image")], "bob", 60.0)
    untimed = in_review(store, "r4")
    decide(untimed, [*accepted_as_is(untimed), verdict("accept")], "ann", None)
    stats = compute_stats([kept, edited, thrown, untimed, in_review(store, "r5")])
    assert stats["records"] == {"reviewed": 3, "rejected_in_review": 1, "in_review": 1}
    assert stats["boxes"] == {"concepts_reviewed": 6, "concepts_with_box_edits": 1}
    assert stats["iou_by_concept"] == {
        "husky": {"masks": 3, "mean_iou": 1.0, "min_iou": 1.0},
        "wolf": {
            "masks": 3,
            "mean_iou": round((2 + round(wolf_iou, 6)) / 3, 4),
            "min_iou": round(wolf_iou, 4),
        },
    }
    assert stats["time_per_task"] == {"tasks": 3, "mean_seconds": 30.0, "median_seconds": 20.0}
    assert stats["annotators"] == {
        "ann": {"reviewed": 2, "rejected": 0, "masks_edited": 0, "boxes_edited": 1, "mean_seconds": 10.0},
        "bob": {"reviewed": 1, "rejected": 1, "masks_edited": 1, "boxes_edited": 0, "mean_seconds": 40.0},
    }
    assert stats["rejection_reasons"] == {"unusable_image": 1}
    assert compute_stats([kept, edited])["time_per_task"] == {
        "tasks": 2,
        "mean_seconds": 15.0,
        "median_seconds": 15.0,
    }
    assert compute_stats([])["time_per_task"] == {"tasks": 0, "mean_seconds": None, "median_seconds": None}


# -- details the mutation pass found untested ------------------------------------------------------------
def test_a_corrupt_brush_alone_rejects_as_mask_undecodable(store):
    record = in_review(store)
    corrupt = fmt.brush_result("wolf", machine(record, "wolf"), "b")
    corrupt["value"]["rle"] = [3, 1, 4]
    apply(record, [fmt.brush_result("husky", machine(record, "husky"), "a"), corrupt, verdict("accept")])
    assert record.state == State.rejected and record.rejection.reason == "mask_undecodable"
    assert record.rejection.detail.startswith("wolf: brush RLE does not decode")


def test_tasks_listed_as_sdk_models_become_dicts():
    """The SDK lists tasks as pydantic models (``model_dump``); plain dicts pass through."""

    class Task:
        def model_dump(self):
            return {"id": 5, "data": {"record_id": "r1"}}

    client = SimpleNamespace(tasks=SimpleNamespace(list=lambda **kwargs: [Task(), {"id": 6}]))
    assert list(review._iter_tasks(client, PROJECT, fields="all")) == [
        {"id": 5, "data": {"record_id": "r1"}},
        {"id": 6},
    ]


def test_skipped_annotations_count_for_no_annotator_and_an_untimed_annotation_is_the_oldest(store):
    """``was_cancelled`` (the annotator pressed Skip) is no annotation; an annotation without
    ``updated_at`` / ``created_at`` sorts before every timed one."""
    record = in_review(store)
    kept = annotation([verdict("accept")], id=1, who=1, updated="2026-12-01T01:00:00Z")
    skipped = annotation([verdict("reject")], id=2, who=1, updated="2026-12-01T05:00:00Z") | {
        "was_cancelled": True
    }
    other = annotation([verdict("accept")], id=3, who=2, updated="2026-12-01T02:00:00Z")
    assert review._latest_per_annotator({"annotations": [kept, skipped, other]}) == [other, kept]
    untimed = annotation([verdict("accept")], id=9, updated=None, created=None)
    timed = annotation([verdict("accept")], id=4)
    assert review._submitted({"annotations": [untimed, timed]}) is timed
    assert review._version(untimed) == ("", 9)
    with pytest.raises(ValueError, match="at least 2 annotators"):
        review.consensus([kept], record, 1)


def test_one_pull_counts_every_pending_and_disagreeing_record_and_names_reviewers_by_id(store):
    """Counts add up over a run (two of each), and an annotation's ``completed_by`` user id is looked up
    through the client's users API (``u<id>@example.org`` in the fake)."""
    pending = [in_review(store, f"p{i}", task=60 + i) for i in range(2)]
    split = [in_review(store, f"s{i}", task=70 + i) for i in range(2)]
    tasks = [{"id": 60 + i, "data": {"record_id": f"p{i}"}, "annotations": []} for i in range(2)]
    for i, record in enumerate(split):
        tasks.append({"id": 70 + i, "data": {"record_id": record.id}, "annotations": [
            annotation([*accepted_as_is(record), verdict("accept")], id=80 + i, who=1),
            annotation(half_husky(record), id=90 + i, who=2, updated="2026-12-01T11:00:00Z")]})  # fmt: skip
    stage = review.ReviewPull(Client(tasks, annotators=2), "http://ls")
    stage.run([*pending, *split], store)
    assert (stage.report.pending, stage.report.disagreed) == (2, 2)

    decided = in_review(store, "d1", task=50)
    one = [{"id": 50, "data": {"record_id": "d1"},
            "annotations": [annotation([*accepted_as_is(decided), verdict("accept")], who=7)]}]  # fmt: skip
    review.ReviewPull(Client(one), "http://ls").run([decided], store)
    assert decided.state == State.reviewed and decided.history[-1].params["reviewer"] == "u7@example.org"


@pytest.mark.parametrize("images", ["auto", "local", "upload"])
def test_push_takes_each_image_mode(images):
    assert review.ReviewPush(Client([]), "http://ls/", "token", images=images).images == images


def test_push_refuses_an_unknown_image_mode_naming_the_allowed_ones():
    with pytest.raises(ValueError, match="'auto', 'local' or 'upload', got 's3'"):
        review.ReviewPush(Client([]), "http://ls", "token", images="s3")
