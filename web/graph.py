"""The flow graph of an operation as server-rendered SVG (no script, no asset).

Layout is the flow's own structure (flowshape.Plan), top to bottom: steps run
one after another are stacked with an arrow between them, parallel branches
stand side by side in a grey box (wrapped every MAX_LANES lanes so a wide
fan-out stays on screen), and a block run by a retry controller sits in a
dashed box that says how many tries it has. Each step is filled with its
state's colour (the classes views.step_class gives, styled by style.css),
carries its attempt count when it ran more than once, and links to its row in
the steps table. A red line marks the point of no return: below it the
operation only goes forward. A 100-step line is 100 rows of 26 px, in a box
that scrolls.
"""

from __future__ import annotations

import html

from web.flowshape import Node, Plan, Step, steps_in

NODE_W, NODE_H, VGAP, HGAP, PAD, LABEL_H, MAX_LANES = 200, 18, 8, 10, 6, 14, 4
e = html.escape


def _size(node: Node) -> tuple[float, float]:
    if isinstance(node, Step):
        return NODE_W, NODE_H
    sizes = [_size(c) for c in node.children] or [(NODE_W, NODE_H)]
    if node.parallel:
        rows = [sizes[i : i + MAX_LANES] for i in range(0, len(sizes), MAX_LANES)]
        w = max(sum(s[0] for s in r) + HGAP * (len(r) - 1) for r in rows)
        h = sum(max(s[1] for s in r) for r in rows) + VGAP * (len(rows) - 1)
    else:
        w = max(s[0] for s in sizes)
        h = sum(s[1] for s in sizes) + VGAP * (len(sizes) - 1)
    if node.parallel or node.retry:
        w, h = w + 2 * PAD, h + 2 * PAD + LABEL_H
    return w, h


class _Drawing:
    def __init__(self, plan: Plan, steps: dict[str, dict], width: float) -> None:
        self.plan, self.steps, self.width = plan, steps, width
        self.out: list[str] = []
        self.no_return_drawn = False

    def _contains_no_return(self, node: Node) -> bool:
        nr = self.plan.no_return
        if nr is None:
            return False
        if isinstance(node, Step):
            return node.name == nr
        return node.retry == nr or nr in steps_in(node) or any(self._contains_no_return(c) for c in node.children)

    def _no_return_line(self, y: float) -> None:
        self.no_return_drawn = True
        self.out.append(
            f'<g class="no-return"><line x1="0" x2="{self.width:.0f}" y1="{y:.1f}" y2="{y:.1f}"/>'
            f'<text x="{self.width - 4:.0f}" y="{y - 2:.1f}" text-anchor="end">point of no return: '
            "forward only below</text></g>"
        )

    def step(self, node: Step, x: float, y: float) -> None:
        st = self.steps.get(node.name)
        cls = st["class"] if st else "pending"
        tries = st["attempts"] if st else 0
        label = node.name if len(node.name) <= 27 else node.name[:26] + "…"
        badge = (
            f'<text class="tries" x="{x + NODE_W - 4:.1f}" y="{y + 13:.1f}" text-anchor="end">×{tries}</text>'
            if tries > 1
            else ""
        )
        tip = [node.name, st["state"] if st else "not run"]
        if st:
            if st["execute_s"] is not None:
                tip.append(f"execute {st['execute_s']:.3f}s")
            if tries > 1:
                tip.append(f"{tries} tries")
            if st["revert_s"] is not None:
                tip.append(f"revert {st['revert_s']:.3f}s")
            if st["error"]:
                tip.append(st["error"].splitlines()[0][:200])
        self.out.append(
            f'<a href="#step-{e(node.name)}"><g class="node {cls}" data-step="{e(node.name)}">'
            f"<title>{e(' · '.join(tip))}</title>"
            f'<rect x="{x:.1f}" y="{y:.1f}" width="{NODE_W}" height="{NODE_H}" rx="4"/>'
            f'<text x="{x + 6:.1f}" y="{y + 13:.1f}">{e(label)}</text>{badge}</g></a>'
        )

    def node(self, node: Node, x: float, y: float) -> None:
        if isinstance(node, Step):
            self.step(node, x, y)
            return
        w, h = _size(node)
        if node.parallel or node.retry:
            cls = "retry" if node.retry else "parallel"
            if node.retry:
                used = (self.steps.get(node.retry) or {}).get("attempts", 0)
                text = f"retried: up to {node.attempts} tries" if node.attempts else "retried"
                text += f" (try {used})" if used > 1 else ""
            else:
                text = f"in parallel: {len(node.children)} branches"
            self.out.append(
                f'<g class="group {cls}"><rect x="{x:.1f}" y="{y:.1f}" width="{w:.1f}" '
                f'height="{h:.1f}" rx="6"/><text x="{x + PAD:.1f}" y="{y + 11:.1f}">'
                f"{e(text)}</text></g>"
            )
            x, y, w = x + PAD, y + PAD + LABEL_H, w - 2 * PAD
        if node.parallel:
            sizes = [_size(c) for c in node.children]
            for i in range(0, len(node.children), MAX_LANES):
                row = list(zip(node.children[i : i + MAX_LANES], sizes[i : i + MAX_LANES], strict=True))
                row_w = sum(s[0] for _, s in row) + HGAP * (len(row) - 1)
                cx = x + (w - row_w) / 2
                for child, (cw, _) in row:
                    self.node(child, cx, y)
                    cx += cw + HGAP
                y += max(s[1] for _, s in row) + VGAP
            return
        for i, child in enumerate(node.children):
            cw, ch = _size(child)
            if (
                not self.no_return_drawn
                and self._contains_no_return(child)
                and (
                    isinstance(child, Step)
                    or child.retry == self.plan.no_return
                    or self.plan.no_return == steps_in(child)[0]
                )
            ):
                self._no_return_line(y - VGAP / 2)
            cx = x + (w - cw) / 2
            if i:
                mid = x + w / 2
                self.out.append(
                    f'<line class="edge" x1="{mid:.1f}" x2="{mid:.1f}" '
                    f'y1="{y - VGAP:.1f}" y2="{y - 1:.1f}" marker-end="url(#arrow)"/>'
                )
            self.node(child, cx, y)
            y += ch + VGAP


def graph_svg(plan: Plan, steps: list[dict]) -> str:
    """The flow graph; `steps`: views.operation_detail's step dicts (with `class`)."""
    w, h = _size(plan.root)
    width, height = w + 2, h + 4 + (LABEL_H if plan.no_return else 0)
    d = _Drawing(plan, {st["step"]: st for st in steps}, width)
    d.node(plan.root, 1, 2 + (LABEL_H if plan.no_return else 0))
    return (
        f'<svg id="graph" xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" '
        f'height="{height:.0f}" viewBox="0 0 {width:.0f} {height:.0f}">'
        '<defs><marker id="arrow" viewBox="0 0 6 6" refX="5" refY="3" markerWidth="6" '
        'markerHeight="6" orient="auto"><path d="M0,0 L6,3 L0,6 z"/></marker></defs>'
        f"{''.join(d.out)}</svg>"
    )
