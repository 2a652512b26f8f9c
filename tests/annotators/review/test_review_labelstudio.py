"""Push and pull against a real Label Studio server (started once per session by conftest).

A reviewer is simulated by creating annotations through the API, as the editor does when
the annotator presses Submit.
"""

from __future__ import annotations

import json

import httpx
import numpy as np
import pytest
from label_studio_sdk import LabelStudio
from review_records import make_segmented

from annotators import labelstudio_format as fmt
from annotators.review import LabelStudioUnavailable, pull, push
from annotators.review_stats import read_stats
from manifests.masks import decode_mask
from manifests.record import State

pytestmark = [pytest.mark.labelstudio, pytest.mark.slow]


def _client(info) -> LabelStudio:
    return LabelStudio(base_url=info.url, api_key=info.token)


def _tasks(info, project_id: int) -> list[dict]:
    return [t.model_dump() for t in _client(info).tasks.list(project=project_id, fields="all", page_size=100)]


def _prediction(info, task_id: int) -> list[dict]:
    task = _client(info).tasks.get(str(task_id)).model_dump()
    (prediction,) = task["predictions"]
    return prediction["result"]


def _verdict(choice: str) -> dict:
    return {"from_name": "verdict", "to_name": "image", "type": "choices", "value": {"choices": [choice]}}


def _comment(text: str) -> dict:
    return {"from_name": "comment", "to_name": "image", "type": "textarea", "value": {"text": [text]}}


def _annotate(info, task_id: int, result: list[dict], **fields) -> None:
    _client(info).annotations.create(id=task_id, result=result, was_cancelled=False, **fields)


def _files(store) -> dict[str, bytes]:
    return {i: store.read_bytes(f"records/{i}.json") for i in store.ids()}


def test_every_task_of_records_from_the_real_segmenter_has_its_prediction_score(labelstudio, review_store):
    """Records segmented by ``Sam2Segmenter`` (tiny SAM2, permissive gate) through the runner: each task's
    prediction score is the lowest SAM score of its record, never empty."""
    from PIL import Image

    from annotators.quality import QualityConfig, QualityGate
    from annotators.segment import TINY_CONFIG, Sam2Segmenter
    from manifests.record import SAM_SCORE, Concept, GeneratedSource, Record
    from manifests.stage import run_stage

    info, _ = labelstudio
    store, project = review_store
    rng = np.random.default_rng(0)
    for i in range(3):
        boxes = {"husky": [(4.0, 6.0, 40.0, 50.0)], "wolf": [(50.0, 8.0, 90.0, 60.0)]}
        record = Record(
            id=f"gen-sam-{i}",
            group="husky-wolf-malamute",
            concepts=[Concept(name=n, boxes=b) for n, b in boxes.items()],
            source=GeneratedSource(template="t", setting="s", seed=i),
            state=State.localized,
        )
        store.store_image(record, Image.fromarray(rng.integers(0, 256, (64, 96, 3), dtype=np.uint8)))
        store.put(record)
    segmenter = Sam2Segmenter(TINY_CONFIG, None, device="cpu", gate=QualityGate(QualityConfig.permissive()))
    segmented = [r for r in run_stage(segmenter, store).records if r.state == State.segmented]
    assert len(segmented) == 3

    report = push(store, url=info.url, token=info.token, project=project)
    assert report.pushed == 3
    for record in segmented:
        task = _client(info).tasks.get(str(report.task_ids[record.id])).model_dump()
        (prediction,) = task["predictions"]
        expected = min(c.scores[SAM_SCORE] for c in record.concepts)
        assert prediction["score"] is not None and prediction["score"] == pytest.approx(expected, abs=1e-6)


def test_push_creates_one_task_per_record_with_masks_and_boxes_and_is_idempotent(labelstudio, review_store):
    info, _ = labelstudio
    store, project = review_store
    records = [make_segmented(store, f"gen-{i}", seed=i) for i in range(3)]
    records.append(
        make_segmented(store, "gen-3", concepts=("lemon", "lime", "citron"), size=(120, 50), group="citrus")
    )

    report = push(store, url=info.url, token=info.token, project=project, batch_size=2)
    assert report.pushed == 4 and report.images == "local"
    for record in records:
        stored = store.get(record.id)
        assert stored.state == State.in_review and stored.review_task == report.task_ids[record.id]
    tasks = _tasks(info, report.project_id)
    assert len(tasks) == 4  # local storage is registered without a sync: no task per image file

    # the task of the three-concept record: data, one brush per mask, one rectangle per box, in percent
    task = next(t for t in tasks if t["data"]["record_id"] == "gen-3")
    assert task["data"]["concepts"] == "lemon, lime, citron"
    (prediction,) = _client(info).tasks.get(str(task["id"])).model_dump()["predictions"]
    assert prediction["score"] == pytest.approx(0.7)  # the weakest of the SAM scores 0.9, 0.8, 0.7
    result = _prediction(info, task["id"])
    brushes = [r for r in result if r["type"] == "brushlabels"]
    rects = [r for r in result if r["type"] == "rectanglelabels"]
    assert sorted(r["value"]["brushlabels"][0] for r in brushes) == ["citron", "lemon", "lime"]
    assert len(rects) == 3
    for brush in brushes:
        concept = records[3].concept(brush["value"]["brushlabels"][0])
        assert np.array_equal(fmt.decode_brush(brush, 50, 120), decode_mask(concept.mask))
    lemon_rect = next(r for r in rects if r["value"]["rectanglelabels"] == ["lemon"])
    assert fmt.rectangle_box(lemon_rect, 120, 50) == pytest.approx(
        records[3].concept("lemon").boxes[0], abs=1e-6
    )

    # the image URL serves the stored file
    response = httpx.get(info.url + task["data"]["image"], headers={"Authorization": f"Token {info.token}"})
    assert response.status_code == 200 and response.content == store.read_bytes(records[3].image.path)

    # the project's config has no label list: each task offers exactly its record's concepts
    assert _client(info).projects.get(report.project_id).label_config == fmt.LABEL_CONFIG
    for t in tasks:
        names = store.get(t["data"]["record_id"]).concept_names
        assert [m["value"] for m in t["data"]["mask_labels"]] == names
        assert [b["value"] for b in t["data"]["box_labels"]] == names
    assert [m["hotkey"] for m in task["data"]["mask_labels"]] == ["1", "2", "3"]

    # pushing again creates nothing; a new record gets exactly one new task
    again = push(store, url=info.url, token=info.token, project=project)
    assert again.pushed == 0 and again.project_id == report.project_id
    assert len(_tasks(info, report.project_id)) == 4
    make_segmented(store, "gen-4", seed=4)
    assert push(store, url=info.url, token=info.token, project=project).pushed == 1
    assert len(_tasks(info, report.project_id)) == 5


def test_push_adopts_a_task_that_a_crashed_push_created(labelstudio, review_store):
    info, _ = labelstudio
    store, project = review_store
    record = make_segmented(store, "gen-crash")
    before = store.read_bytes("records/gen-crash.json")
    report = push(store, url=info.url, token=info.token, project=project)
    store.write_bytes("records/gen-crash.json", before)  # as if the process died before writing the record
    again = push(store, url=info.url, token=info.token, project=project)
    assert again.pushed == 0 and again.adopted == 1
    assert store.get(record.id).review_task == report.task_ids[record.id]
    assert len(_tasks(info, report.project_id)) == 1


OLD_CONFIG = """<View>
  <Image name="image" value="$image"/>
  <BrushLabels name="mask" toName="image"><Label value="husky"/><Label value="wolf"/></BrushLabels>
  <RectangleLabels name="box" toName="image"><Label value="husky"/><Label value="wolf"/></RectangleLabels>
  <Choices name="verdict" toName="image"><Choice value="accept"/><Choice value="reject"/></Choices>
</View>"""
"""A project as an older MCC made it: one label list for the whole project, tasks without labels."""


def test_push_to_a_project_of_an_older_mcc_gives_it_per_task_labels(labelstudio, review_store):
    info, _ = labelstudio
    store, project = review_store
    record = make_segmented(store, "gen-old")
    client = _client(info)
    project_id = client.projects.create(title=project, label_config=OLD_CONFIG).id
    old = {"image": "/data/local-files/?d=x.png", "record_id": record.id, "concepts": "husky, wolf"}
    client.projects.import_tasks(project_id, request=[{"data": old}], return_task_ids=True)
    make_segmented(store, "gen-new", seed=2)
    report = push(store, url=info.url, token=info.token, project=project)
    assert report.project_id == project_id and report.pushed == 1 and report.adopted == 1
    assert client.projects.get(project_id).label_config == fmt.LABEL_CONFIG
    tasks = {t["data"]["record_id"]: t["data"] for t in _tasks(info, project_id)}
    assert tasks["gen-old"] == {**old, **fmt.task_labels(record.concept_names)}  # the rest of its data kept
    assert [m["value"] for m in tasks["gen-new"]["mask_labels"]] == store.get("gen-new").concept_names


def test_pull_applies_accept_edit_reject_and_leaves_untouched_tasks_in_review(labelstudio, review_store):
    info, _ = labelstudio
    store, project = review_store
    for name in ("accept", "edit", "reject", "untouched"):
        make_segmented(store, f"gen-{name}", seed=len(name))
    report = push(store, url=info.url, token=info.token, project=project)
    task = report.task_ids

    # accept unchanged: the editor copies the prediction into the annotation; plus a stray label
    stray = fmt.brush_result("malamute", np.ones((64, 96), bool), "x")
    _annotate(info, task["gen-accept"], _prediction(info, task["gen-accept"]) + [stray, _verdict("accept")])
    # edit: the wolf mask is repainted as two strokes (a rectangle and a square)
    edited = np.zeros((64, 96), bool)
    edited[5:30, 50:90] = True
    edited[40:60, 10:20] = True
    stroke_a, stroke_b = np.zeros_like(edited), np.zeros_like(edited)
    stroke_a[5:30, 50:90] = True
    stroke_b[40:60, 10:20] = True
    kept = [
        r
        for r in _prediction(info, task["gen-edit"])
        if not (r["type"] == "brushlabels" and r["value"]["brushlabels"] == ["wolf"])
    ]
    _annotate(
        info,
        task["gen-edit"],
        kept
        + [
            fmt.brush_result("wolf", stroke_a, "s1"),
            fmt.brush_result("wolf", stroke_b, "s2"),
            _verdict("accept"),
        ],
    )
    # reject with a reason chosen from the fixed list, and a comment
    reason = {"from_name": fmt.REJECT_REASON, "to_name": "image", "type": "choices",
              "value": {"choices": ["wrong concept"]}}  # fmt: skip
    _annotate(info, task["gen-reject"], [_verdict("reject"), reason, _comment("the wolf is a husky")])

    machine_husky = decode_mask(store.get("gen-edit").concept("husky").mask)
    pulled = pull(store, url=info.url, token=info.token, project=project)
    assert (pulled.reviewed, pulled.rejected, pulled.pending, pulled.returned) == (2, 1, 1, 0)
    assert any("malamute" in w for w in pulled.warnings)

    accepted = store.get("gen-accept")
    assert accepted.state == State.reviewed
    assert [c.review for c in accepted.concepts] == ["accepted", "accepted"]
    event = accepted.history[-1]
    assert event.params["reviewer"] == info.username and event.params["iou"] == {"husky": 1.0, "wolf": 1.0}
    assert event.params["reviewed_at"]

    edit = store.get("gen-edit")
    assert edit.state == State.reviewed
    assert edit.concept("wolf").review == "edited" and edit.concept("husky").review == "accepted"
    assert np.array_equal(decode_mask(edit.concept("wolf").mask), edited)  # pixel for pixel
    assert np.array_equal(decode_mask(edit.concept("husky").mask), machine_husky)
    assert edit.history[-1].params["iou"]["wolf"] < 0.98

    rejected = store.get("gen-reject")
    assert rejected.state == State.rejected
    assert (rejected.rejection.stage, rejected.rejection.reason) == ("review", "wrong_concept")
    assert rejected.rejection.detail.endswith(
        ": the wolf is a husky"
    )  # the comment is the detail, not the code
    assert rejected.history[-1].params["reject_reason"] == "wrong_concept"
    created = _client(info).projects.get(report.project_id)  # the instruction page annotators see first
    assert created.show_instruction and created.expert_instruction == fmt.INSTRUCTIONS
    assert store.get("gen-untouched").state == State.in_review

    stats = read_stats(store)
    assert stats["masks"] == {
        "reviewed": 4,
        "accepted_unedited": 3,
        "edited": 1,
        "fraction_accepted_unedited": 0.75,
    }
    assert stats["rejection_reasons"] == {"wrong_concept": 1}
    assert stats["records"]["in_review"] == 1

    # pulling again changes nothing
    before = _files(store)
    again = pull(store, url=info.url, token=info.token, project=project)
    assert (again.reviewed, again.rejected, again.pending) == (0, 0, 1)
    assert _files(store) == before


def test_interrupted_pull_finishes_the_rest_and_changes_nothing_twice(labelstudio, review_store):
    info, _ = labelstudio
    store, project = review_store
    for i in range(3):
        make_segmented(store, f"gen-{i}", seed=i)
    report = push(store, url=info.url, token=info.token, project=project)
    for task_id in report.task_ids.values():
        _annotate(info, task_id, _prediction(info, task_id) + [_verdict("accept")])

    real_write, calls = store.write_group, []

    def crash_on_second(files, records):  # the runner's group commits: stop before the second record
        written = {}
        for record in records:
            calls.append(record.id)
            if len(calls) == 2:
                raise KeyboardInterrupt("interrupted")
            written.update(real_write(files, [record]))
            files = {}
        return written

    store.write_group = crash_on_second
    with pytest.raises(KeyboardInterrupt):
        pull(store, url=info.url, token=info.token, project=project)
    store.write_group = real_write
    assert [r.state for r in store.iter()].count(State.reviewed) == 1
    first = store.get(calls[0])
    n_events = len(first.history)

    rest = pull(store, url=info.url, token=info.token, project=project)
    assert rest.reviewed == 2
    assert all(r.state == State.reviewed for r in store.iter())
    assert len(store.get(calls[0]).history) == n_events
    assert sum(e.params.get("action") == "pull" for e in store.get(calls[0]).history) == 1


def test_deleted_task_returns_its_record_to_segmented_and_push_makes_a_new_one(labelstudio, review_store):
    info, _ = labelstudio
    store, project = review_store
    make_segmented(store, "gen-gone")
    report = push(store, url=info.url, token=info.token, project=project)
    old_task = report.task_ids["gen-gone"]
    _client(info).tasks.delete(str(old_task))

    pulled = pull(store, url=info.url, token=info.token, project=project)
    assert pulled.returned == 1
    record = store.get("gen-gone")
    assert record.state == State.segmented and record.review_task is None
    assert "deleted" in record.history[-1].note

    again = push(store, url=info.url, token=info.token, project=project)
    assert again.pushed == 1 and store.get("gen-gone").review_task == again.task_ids["gen-gone"]
    (task,) = _tasks(info, report.project_id)
    assert task["id"] == again.task_ids["gen-gone"] and task["data"]["record_id"] == "gen-gone"


def test_a_task_id_reused_by_another_record_counts_as_deleted(labelstudio, review_store):
    info, _ = labelstudio
    store, project = review_store
    make_segmented(store, "gen-first")
    first = push(store, url=info.url, token=info.token, project=project).task_ids["gen-first"]
    _client(info).tasks.delete(str(first))
    make_segmented(store, "gen-second", seed=1)
    push(store, url=info.url, token=info.token, project=project)  # SQLite may hand out the same id again
    pulled = pull(store, url=info.url, token=info.token, project=project)
    assert pulled.returned == 1
    assert store.get("gen-first").state == State.segmented
    assert store.get("gen-second").state == State.in_review


def test_brush_of_the_wrong_size_rejects_that_concept_and_keeps_the_others(labelstudio, review_store):
    info, _ = labelstudio
    store, project = review_store
    make_segmented(store, "gen-size")
    report = push(store, url=info.url, token=info.token, project=project)
    task_id = report.task_ids["gen-size"]
    result = [
        r
        for r in _prediction(info, task_id)
        if not (r["type"] == "brushlabels" and r["value"]["brushlabels"] == ["wolf"])
    ]
    result.append(fmt.brush_result("wolf", np.ones((32, 48), bool), "small"))  # half the image size
    _annotate(info, task_id, result + [_verdict("accept")])

    pull(store, url=info.url, token=info.token, project=project)
    record = store.get("gen-size")
    assert record.state == State.rejected
    assert (record.rejection.stage, record.rejection.reason) == ("review", "mask_size_mismatch")
    assert "wolf" in record.rejection.detail and "husky" not in record.rejection.detail
    assert record.concept("husky").review == "accepted"  # the other concept went through
    assert record.history[-1].params["iou"] == {"husky": 1.0}


def test_upload_mode_serves_the_images_without_local_storage(labelstudio, review_store):
    info, _ = labelstudio
    store, project = review_store
    record = make_segmented(store, "gen-upload")
    report = push(store, url=info.url, token=info.token, project=project, images="upload")
    assert report.images == "upload"
    (task,) = _tasks(info, report.project_id)
    assert task["data"]["image"].startswith("/data/upload/")
    response = httpx.get(info.url + task["data"]["image"], headers={"Authorization": f"Token {info.token}"})
    assert response.status_code == 200 and response.content == store.read_bytes(record.image.path)
    # the files sit in the companion project (a direct upload needs a one-data-key config), which has no tasks
    title = f"images: {project}"[:50]  # Label Studio titles have at most 50 characters
    (images,) = [p for p in _client(info).projects.list() if p.title == title]
    assert task["data"]["image"].startswith(f"/data/upload/{images.id}/") and _tasks(info, images.id) == []
    make_segmented(store, "gen-upload-2", seed=3)  # a second push reuses it
    push(store, url=info.url, token=info.token, project=project, images="upload")
    assert len([p for p in _client(info).projects.list() if p.title == title]) == 1


def _annotator(info, name: str) -> int:
    """The id of a Label Studio user ``name`` (created once per server)."""
    client = _client(info)
    email = f"{name}@mcc.local"
    for user in client.users.list():
        if user.email == email:
            return user.id
    return client.users.create(username=name, email=email, password="annotator-pass-1").id


def test_two_annotators_per_task_a_disagreement_asks_a_third_who_decides(labelstudio, review_store):
    info, _ = labelstudio
    store, project = review_store
    record = make_segmented(store, "gen-two")
    report = push(store, url=info.url, token=info.token, project=project, annotators=2)
    assert _client(info).projects.get(report.project_id).maximum_annotations == 2
    task_id = report.task_ids["gen-two"]
    machine = _prediction(info, task_id)
    husky = decode_mask(record.concept("husky").mask)
    husky[:, 24:] = False  # the annotator keeps the left half of the husky (a disk around x = 24)
    halved = [r for r in machine if r["value"].get("brushlabels") != ["husky"]] + [
        fmt.brush_result("husky", husky, "h")
    ]
    ann, bea, cal = (_annotator(info, name) for name in ("ann", "bea", "cal"))
    _annotate(info, task_id, [*machine, _verdict("accept")], completed_by=ann)
    assert pull(store, url=info.url, token=info.token, project=project).pending == 1  # one of two so far
    _annotate(info, task_id, [*halved, _verdict("accept")], completed_by=bea)
    first = pull(store, url=info.url, token=info.token, project=project)
    assert first.disagreed == 1 and store.get("gen-two").state == State.in_review
    assert _client(info).tasks.get(str(task_id)).overlap == 3  # back in the queue for a third annotator
    assert pull(store, url=info.url, token=info.token, project=project).disagreed == 0  # said once
    _annotate(info, task_id, [*machine, _verdict("accept")], completed_by=cal)
    pull(store, url=info.url, token=info.token, project=project)
    decided = store.get("gen-two")
    assert decided.state == State.reviewed
    agreement = decided.history[-1].params["agreement"]
    assert agreement["score"] == 1.0 and agreement["reviewers"] == ["cal@mcc.local", "ann@mcc.local"]
    inter = read_stats(store)["inter_annotator"]
    assert inter["records_decided_by_agreement"] == 1 and inter["records_with_disagreement"] == 1
    make_segmented(store, "gen-kept", seed=6)  # a push that does not say keeps the project's two
    push(store, url=info.url, token=info.token, project=project)
    assert _client(info).projects.get(report.project_id).maximum_annotations == 2
    make_segmented(store, "gen-one", seed=5)  # a push that asks for one changes the project
    push(store, url=info.url, token=info.token, project=project, annotators=1)
    assert _client(info).projects.get(report.project_id).maximum_annotations == 1


def test_rejected_token_and_unreachable_server_change_nothing(labelstudio, review_store):
    info, _ = labelstudio
    store, project = review_store
    make_segmented(store, "gen-a")
    before = _files(store)
    with pytest.raises(LabelStudioUnavailable, match="rejected the API token") as error:
        push(store, url=info.url, token="0" * 40, project=project)
    assert info.url in str(error.value) and "LABEL_STUDIO_API_KEY" in str(error.value)
    from annotators.labelstudio_server import free_port

    dead = f"http://127.0.0.1:{free_port()}"
    for call in (push, pull):
        with pytest.raises(LabelStudioUnavailable, match="cannot reach Label Studio") as error:
            call(store, url=dead, token=info.token, project=project)
        assert dead in str(error.value) and "mcc labelstudio status" in str(error.value)
    assert _files(store) == before


def test_cli_push_pull_stats_never_print_the_token(labelstudio, review_store, monkeypatch):
    from typer.testing import CliRunner

    from flows.cli import app

    info, _ = labelstudio
    store, project = review_store
    make_segmented(store, "gen-cli")
    monkeypatch.setenv("LABEL_STUDIO_URL", info.url)
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", info.token)
    runner = CliRunner()
    pushed = runner.invoke(app, ["review", "push", "--workdir", store.workdir, "--project", project])
    assert pushed.exit_code == 0, pushed.output
    assert "1 new tasks" in pushed.output
    task_id = store.get("gen-cli").review_task
    _annotate(info, task_id, _prediction(info, task_id) + [_verdict("accept")], lead_time=7.5)
    pulled = runner.invoke(app, ["review", "pull", "--workdir", store.workdir, "--project", project])
    assert pulled.exit_code == 0 and "reviewed 1" in pulled.output
    stats = runner.invoke(app, ["review", "stats", "--workdir", store.workdir, "--json"])
    document = json.loads(stats.output)
    assert document["masks"]["accepted_unedited"] == 2
    assert document["time_per_task"] == {
        "tasks": 1,
        "mean_seconds": 7.5,
        "median_seconds": 7.5,
    }  # Label Studio's
    (who,) = document["annotators"]  # the token's user, by email
    assert "@" in who and document["annotators"][who]["reviewed"] == 1
    table = runner.invoke(app, ["review", "stats", "--workdir", store.workdir], terminal_width=200)
    assert "time per task: mean 7.5 s" in table.output and "per annotator" in table.output
    bad = runner.invoke(
        app, ["review", "pull", "--workdir", store.workdir, "--project", project, "--token", "bad-token"]
    )
    assert bad.exit_code != 0 and "rejected the API token" in bad.output
    for output in (pushed.output, pulled.output, stats.output, bad.output):
        assert info.token not in output
    status = runner.invoke(app, ["labelstudio", "status", "--workdir", str(labelstudio[1])])
    assert status.exit_code == 0 and info.url in status.output and "healthy" in status.output


def test_labelstudio_start_prints_an_export_line_to_paste(labelstudio):
    """`mcc labelstudio start` on the running server: one line that sets both variables, token included."""
    from typer.testing import CliRunner

    from flows.cli import app

    info, root = labelstudio
    result = CliRunner().invoke(app, ["labelstudio", "start", "--workdir", str(root)], terminal_width=300)
    assert result.exit_code == 0, result.output
    assert f"export LABEL_STUDIO_URL={info.url} LABEL_STUDIO_API_KEY={info.token}\n" in result.output


def test_push_orders_tasks_lowest_score_first_and_the_project_opens_on_that_view(labelstudio, review_store):
    """--order uncertainty (default): task ids follow ascending task score, whatever the record ids;
    each task's data holds its score, per-concept SAM scores and mask shares; the project's first
    tab sorts by prediction score; --order id pushes in id order."""
    from annotators.review import UNCERTAIN_FIRST_VIEW
    from manifests.record import SAM_SCORE

    info, _ = labelstudio
    store, project = review_store
    weakest = {"gen-a": 0.8, "gen-b": 0.3, "gen-c": 0.55}
    for i, (record_id, score) in enumerate(weakest.items()):
        record = make_segmented(store, record_id, seed=i)
        record.concepts[1].scores[SAM_SCORE] = score
        store.put(record)
    report = push(store, url=info.url, token=info.token, project=project, batch_size=1)
    by_task = sorted(report.task_ids, key=report.task_ids.get)
    assert by_task == ["gen-b", "gen-c", "gen-a"]
    task = _client(info).tasks.get(str(report.task_ids["gen-b"])).model_dump()
    assert task["data"]["score"] == pytest.approx(0.3)
    assert task["data"]["scores"] == {"husky": pytest.approx(0.9), "wolf": pytest.approx(0.3)}
    record = store.get("gen-b")
    assert task["data"]["mask_share"]["husky"] == pytest.approx(
        decode_mask(record.concepts[0].mask).mean(), abs=1e-4
    )
    (view,) = _client(info).views.list(project=report.project_id)
    assert view.data["title"] == UNCERTAIN_FIRST_VIEW["title"]
    listed = _client(info).tasks.list(project=report.project_id, view=view.id, fields="all")
    assert [t.data["record_id"] for t in listed] == ["gen-b", "gen-c", "gen-a"]

    by_id_store = type(store)(store.workdir + "-by-id")  # a sibling below the server's document root
    for i, (record_id, score) in enumerate(weakest.items()):
        record = make_segmented(by_id_store, record_id, seed=i)
        record.concepts[1].scores[SAM_SCORE] = score
        by_id_store.put(record)
    by_id = push(by_id_store, url=info.url, token=info.token, project=project[:40] + "-id", order="id")
    assert sorted(by_id.task_ids, key=by_id.task_ids.get) == ["gen-a", "gen-b", "gen-c"]
    (view,) = _client(info).views.list(project=by_id.project_id)  # task ids now differ from score order
    listed = _client(info).tasks.list(project=by_id.project_id, view=view.id, fields="all")
    assert [t.data["record_id"] for t in listed] == ["gen-b", "gen-c", "gen-a"]


def test_an_annotation_updated_after_a_pull_is_applied_by_the_next_pull(labelstudio, review_store):
    """accept -> pull -> the reviewer repaints the wolf and updates -> pull applies the edit (against the
    machine mask) -> update to reject -> rejected -> update back to accepting the prediction -> reviewed
    with the machine masks again; an unchanged annotation is never applied twice."""
    info, _ = labelstudio
    store, project = review_store
    record = make_segmented(store, "gen-rev", seed=3)
    machine = {c.name: decode_mask(c.mask) for c in record.concepts}
    report = push(store, url=info.url, token=info.token, project=project)
    task_id = report.task_ids["gen-rev"]
    prediction = _prediction(info, task_id)
    client = _client(info)
    annotation = client.annotations.create(
        id=task_id, result=prediction + [_verdict("accept")], was_cancelled=False
    )
    first = pull(store, url=info.url, token=info.token, project=project)
    assert (first.reviewed, first.revised) == (1, 0)
    assert [c.review for c in store.get("gen-rev").concepts] == ["accepted", "accepted"]

    edited = np.zeros((64, 96), bool)
    edited[10:40, 50:80] = True
    kept = [
        r for r in prediction if not (r["type"] == "brushlabels" and r["value"]["brushlabels"] == ["wolf"])
    ]
    client.annotations.update(
        annotation.id, result=kept + [fmt.brush_result("wolf", edited, "w"), _verdict("accept")]
    )
    second = pull(store, url=info.url, token=info.token, project=project)
    assert (second.reviewed, second.revised) == (1, 1)
    revised = store.get("gen-rev")
    assert revised.state == State.reviewed and revised.concept("wolf").review == "edited"
    assert np.array_equal(decode_mask(revised.concept("wolf").mask), edited)
    assert (
        revised.history[-1].params["revised"] is True
        and revised.history[-1].params["annotation"] == annotation.id
    )

    before = _files(store)
    unchanged = pull(store, url=info.url, token=info.token, project=project)
    assert (unchanged.reviewed, unchanged.rejected, unchanged.revised) == (0, 0, 0) and _files(
        store
    ) == before

    reason = {"from_name": fmt.REJECT_REASON, "to_name": "image", "type": "choices",
              "value": {"choices": ["unusable image"]}}  # fmt: skip
    client.annotations.update(annotation.id, result=[_verdict("reject"), reason])
    third = pull(store, url=info.url, token=info.token, project=project)
    assert (third.rejected, third.revised) == (1, 1)
    assert store.get("gen-rev").rejection.reason == "unusable_image"

    client.annotations.update(annotation.id, result=prediction + [_verdict("accept")])
    fourth = pull(store, url=info.url, token=info.token, project=project)
    assert (fourth.reviewed, fourth.revised) == (1, 1)
    back = store.get("gen-rev")
    assert back.state == State.reviewed and [c.review for c in back.concepts] == ["accepted", "accepted"]
    for concept in back.concepts:  # judged against the machine masks of the task, not the earlier edit
        assert np.array_equal(decode_mask(concept.mask), machine[concept.name])
