"""The dashboard: a static page over the public REST API, and its DAG layout.

The page (`web/static/`) is plain HTML, CSS and JavaScript served as package
data, so there is no build step and no JavaScript toolchain. It reads only the
public API. The one thing it cannot do well itself is lay out a large DAG, so
the server does that with grandalf's Sugiyama layout behind the extension
endpoint `GET /api/workflows/{id}/layout`, which also carries what the page
needs of the definition and the API does not show: the declared run inputs
(for the run form) and the concurrency group (to explain a queued run).

A definition never changes once created, so a layout is computed once per
shape of job graph (a matrix's run has its own jobs) and kept. Computing one
is CPU work in pure Python: it runs in a worker thread, one at a time, so
neither the event loop nor the machine is swamped when many large workflows
are opened at once.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Sequence
from importlib import resources
from typing import Any

import trio
from grandalf.graphs import Edge, Vertex, graph_core
from grandalf.layouts import SugiyamaLayout
from pydantic import BaseModel, Field
from quart import Blueprint, Response, request
from quart_schema import document_response, hide
from quart_trio import QuartTrio

from actors import Runtime
from actors.models import ErrorBody, Job
from actors.spec import WorkflowSpec

# Box size and spacing of the drawing, in CSS pixels; the page draws boxes this size.
NODE_WIDTH = 200
NODE_HEIGHT = 64
LAYER_GAP = 72  # horizontal space between two layers
NODE_GAP = 20  # vertical space between two boxes of one layer
# Long edges pass through a bend point per layer; those need far less room than a box.
BEND_GAP = 6
COMPONENT_GAP = 40  # vertical space between unconnected parts of the DAG
MARGIN = 16
PACKED_ROW_WIDTH = 1400  # unconnected parts share rows up to this wide (or the widest part)
MAX_CACHED_LAYOUTS = 512

_STATIC_TYPES = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "app.css": "text/css; charset=utf-8",
}

# The page builds its DOM from API data with DOM APIs only; this policy is the
# second line of defence should anything ever slip through.
_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)


class LayoutNode(BaseModel):
    """A job's box: top-left corner and size, in pixels; `layer` counts from 0 at the left."""

    id: str
    layer: int
    x: float
    y: float
    width: float
    height: float


class LayoutEdge(BaseModel):
    """A dependency drawn from `source` (the dependency) to `target` (the dependent).

    `points` run from the middle of the source's right side, through a bend
    point per layer the edge crosses, to the middle of the target's left side.
    """

    source: str
    target: str
    points: list[tuple[float, float]]


class InputField(BaseModel):
    """A declared run input, as the run form shows it."""

    name: str
    type: str = Field(description="string, boolean, number or choice")
    required: bool
    default: str | bool | int | float | None
    options: list[str] = Field(description="the choices of a `choice` input")
    description: str


class WorkflowLayout(BaseModel):
    """Extension: a left-to-right layered drawing of a workflow's DAG, and the parts
    of its definition the dashboard shows beside it."""

    workflow_id: str
    direction: str = Field(default="LR", description="always LR: layers go left to right")
    width: float
    height: float
    nodes: list[LayoutNode]
    edges: list[LayoutEdge]
    inputs: list[InputField] = Field(default=[], description="declared run inputs, in order")
    concurrency_group: str | None = Field(
        default=None, description="the group its runs wait for, as declared (may hold expressions)"
    )


class _Box:
    """The `view` grandalf reads sizes from and writes positions to."""

    def __init__(self, w: float, h: float) -> None:
        self.w = w
        self.h = h
        self.xy = (0.0, 0.0)


class _Path:
    def __init__(self) -> None:
        self.points: list[tuple[float, float]] = []

    def setpath(self, points) -> None:
        self.points = list(points)


class _Sugiyama(SugiyamaLayout):
    # grandalf keeps alignment conflicts in a list and tests membership once per
    # median neighbour, which is quadratic on large DAGs; a set answers the same.
    conflicts: Any

    def _detect_alignment_conflicts(self) -> None:
        super()._detect_alignment_conflicts()
        self.conflicts = set(self.conflicts)


def _components(jobs: Sequence[Job]) -> list[list[int]]:
    """Indices of `jobs` grouped by connected component, in job order."""
    parent = list(range(len(jobs)))
    index = {job.id: i for i, job in enumerate(jobs)}

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, job in enumerate(jobs):
        for dep in job.depends_on:
            if dep in index:
                parent[find(index[dep])] = find(i)
    groups: dict[int, list[int]] = {}
    for i in range(len(jobs)):
        groups.setdefault(find(i), []).append(i)
    return list(groups.values())


def _lay_out_component(
    jobs: Sequence[Job], group: list[int], vertices: list[Vertex], index: dict[str, int]
) -> tuple[list[LayoutNode], list[LayoutEdge], float, float]:
    """One connected part, with its top-left corner at (0, 0); returns its size too."""
    members = set(group)
    part_edges: list[Edge] = []
    for i in group:
        for dep in dict.fromkeys(jobs[i].depends_on):  # ordered, without repeats
            j = index.get(dep)
            if j is None or j not in members or j == i:
                continue
            edge = Edge(vertices[j], vertices[i])
            edge.view = _Path()
            part_edges.append(edge)
    core = graph_core([vertices[i] for i in group], part_edges)
    sugiyama = _Sugiyama(core)
    sugiyama.xspace = BEND_GAP
    # Bend points get this size; grandalf's default is a median box, far too wide.
    sugiyama.dw, sugiyama.dh = BEND_GAP, NODE_WIDTH
    sugiyama.yspace = LAYER_GAP
    sugiyama.init_all(roots=[v for v in core.sV if not v.e_in()])
    sugiyama.draw()

    # grandalf's (x, y) is a box centre; its x is our y and its y our x.
    centres = [vertices[i].view.xy for i in group]
    top = min(gx for gx, _ in centres) - NODE_HEIGHT / 2
    left = min(gy for _, gy in centres) - NODE_WIDTH / 2
    width = max(gy for _, gy in centres) + NODE_WIDTH / 2 - left
    height = max(gx for gx, _ in centres) + NODE_HEIGHT / 2 - top

    def place(gx: float, gy: float) -> tuple[float, float]:
        return (gy - left, gx - top)

    nodes = []
    for i in group:
        cx, cy = place(*vertices[i].view.xy)
        nodes.append(
            LayoutNode(
                id=jobs[i].id,
                layer=sugiyama.grx[vertices[i]].rank,
                x=cx - NODE_WIDTH / 2,
                y=cy - NODE_HEIGHT / 2,
                width=NODE_WIDTH,
                height=NODE_HEIGHT,
            )
        )
    edges = []
    for edge in part_edges:
        points = [place(*p) for p in edge.view.points]
        (sx, sy), (tx, ty) = points[0], points[-1]
        points[0] = (sx + NODE_WIDTH / 2, sy)
        points[-1] = (tx - NODE_WIDTH / 2, ty)
        edges.append(LayoutEdge(source=edge.v[0].data, target=edge.v[1].data, points=points))
    return nodes, edges, width, height


def compute_layout(workflow_id: str, jobs: Sequence[Job]) -> WorkflowLayout:
    """Lay `jobs` out in dependency layers from left to right, crossings kept low.

    grandalf draws layers top to bottom, so boxes go in with width and height
    swapped and every coordinate comes out transposed. Each connected part is
    laid out on its own (`layer` counts within its part); the parts are then
    packed in rows, in job order, so many small unconnected jobs do not make
    one endless column.
    """
    index = {job.id: i for i, job in enumerate(jobs)}
    vertices = [Vertex(job.id) for job in jobs]
    for v in vertices:
        # The padding keeps boxes NODE_GAP apart while bend points pack BEND_GAP apart.
        v.view = _Box(NODE_HEIGHT + NODE_GAP - BEND_GAP, NODE_WIDTH)
    parts = [_lay_out_component(jobs, g, vertices, index) for g in _components(jobs)]
    row_width = max([w for _, _, w, _ in parts] + [PACKED_ROW_WIDTH])

    nodes: list[LayoutNode] = []
    edges: list[LayoutEdge] = []
    x = y = row_height = width = 0.0
    for part_nodes, part_edges, w, h in parts:
        if x > 0 and x + w > row_width:
            x, y, row_height = 0.0, y + row_height + COMPONENT_GAP, 0.0
        dx, dy = MARGIN + x, MARGIN + y
        for n in part_nodes:
            n.x, n.y = round(n.x + dx, 1), round(n.y + dy, 1)
        for e in part_edges:
            e.points = [(round(px + dx, 1), round(py + dy, 1)) for px, py in e.points]
        nodes += part_nodes
        edges += part_edges
        width = max(width, x + w)
        row_height = max(row_height, h)
        x += w + COMPONENT_GAP
    order = {job_id: i for i, job_id in enumerate(index)}
    nodes.sort(key=lambda n: order[n.id])
    return WorkflowLayout(
        workflow_id=workflow_id,
        width=round(width + 2 * MARGIN, 1),
        height=round(y + row_height + 2 * MARGIN, 1),
        nodes=nodes,
        edges=edges,
    )


class LayoutCache:
    """Layouts by the shape of a job graph (a workflow, or one run of it, whose matrix
    expanded into its own jobs), computed at most once each, least recently used
    dropped."""

    def __init__(self, runtime: Runtime, capacity: int = MAX_CACHED_LAYOUTS) -> None:
        self._runtime = runtime
        self._capacity = capacity
        self._bodies: OrderedDict[tuple, str] = OrderedDict()
        # One layout at a time: a second request for the same shape waits, then hits the cache.
        self._computing = trio.Lock()

    async def get_json(self, workflow_id: str, run: int | None = None) -> str:
        """The layout of the workflow's latest run (or of run `run`) as JSON; NotFound
        for an unknown workflow or run."""
        if run is None:
            jobs = (await self._runtime.get_status(workflow_id)).jobs  # NotFound if unknown
        else:
            jobs = (await self._runtime.get_run(workflow_id, run)).jobs
        key = (workflow_id, tuple((j.id, tuple(j.depends_on)) for j in jobs))
        body = self._cached(key)
        if body is not None:
            return body
        async with self._computing:
            body = self._cached(key)
            if body is None:
                layout = await trio.to_thread.run_sync(compute_layout, workflow_id, jobs)
                self._describe(layout, await self._runtime.get_definition(workflow_id))
                body = layout.model_dump_json()
                self._bodies[key] = body
                while len(self._bodies) > self._capacity:
                    self._bodies.popitem(last=False)
        return body

    def _describe(self, layout: WorkflowLayout, spec: WorkflowSpec) -> None:
        """Add the declared inputs and concurrency group (from the immutable spec)."""
        layout.inputs = [
            InputField(
                name=i.name,
                type=i.type,
                required=i.required,
                default=i.default,
                options=list(i.options),
                description=i.description,
            )
            for i in spec.inputs
        ]
        layout.concurrency_group = spec.concurrency.group if spec.concurrency else None

    def _cached(self, key: tuple) -> str | None:
        body = self._bodies.get(key)
        if body is not None:
            self._bodies.move_to_end(key)
        return body


def _static(name: str) -> Response:
    data = resources.files(__package__).joinpath("static", name).read_bytes()
    response = Response(data, content_type=_STATIC_TYPES[name])
    # Small files; always revalidate so an upgraded server never runs a stale page.
    response.headers["Cache-Control"] = "no-cache"
    response.headers["X-Content-Type-Options"] = "nosniff"
    if name == "index.html":
        response.headers["Content-Security-Policy"] = _CSP
        response.headers["Referrer-Policy"] = "no-referrer"
    return response


def register_dashboard(app: QuartTrio, runtime: Runtime) -> None:
    """Serve the dashboard at `/`, `/workflows/<id>` and `/workflows/<id>/runs/<number>`,
    plus the layout endpoint."""
    dashboard = Blueprint("dashboard", __name__)
    layouts = LayoutCache(runtime)

    @dashboard.get("/")
    @hide
    async def index():
        return _static("index.html")

    # Client-side routing: the page reads the id from its own path.
    @dashboard.get("/workflows/<workflow_id>")
    @hide
    async def workflow_page(workflow_id: str):
        return _static("index.html")

    # A run's page, so a run can be linked; the page checks the number itself.
    @dashboard.get("/workflows/<workflow_id>/runs/<number>")
    @hide
    async def run_page(workflow_id: str, number: str):
        return _static("index.html")

    @dashboard.get("/static/<name>")
    @hide
    async def static_file(name: str):
        if name not in _STATIC_TYPES:
            return Response('{"error": "not found"}', status=404, content_type="application/json")
        return _static(name)

    @dashboard.get("/api/workflows/<workflow_id>/layout")
    @document_response(WorkflowLayout, 200)
    @document_response(ErrorBody, 400)
    @document_response(ErrorBody, 404)
    async def workflow_layout(workflow_id: str):
        """Extension: node positions and edge polylines of the DAG (of the latest run, or
        of run `?run=N`, whose matrix may have made other jobs), layers left to right,
        with the declared run inputs and concurrency group."""
        raw = request.args.get("run")
        if raw is not None and not (raw.isascii() and raw.isdigit() and int(raw) > 0):
            return Response(
                json.dumps({"error": "query parameter 'run' must be a positive integer"}),
                status=400,
                content_type="application/json",
            )
        body = await layouts.get_json(workflow_id, int(raw) if raw else None)
        return Response(body, content_type="application/json")

    app.register_blueprint(dashboard)


__all__ = [
    "InputField",
    "LayoutEdge",
    "LayoutNode",
    "WorkflowLayout",
    "compute_layout",
    "register_dashboard",
]
