/**
 * Graph layout with elkjs, loaded on first use: the small API module, and ELK itself in a Web
 * Worker (elk-worker.min.js, ~1.5 MB) so the page stays responsive while a large tree is laid out.
 */

import type { ELK, ElkNode } from "elkjs/lib/elk-api";

let elk: Promise<ELK> | undefined;

function load(): Promise<ELK> {
  elk ??= Promise.all([
    import("elkjs/lib/elk-api.js"),
    import("elkjs/lib/elk-worker.min.js?url"),
  ]).then(([api, worker]) => {
    const mod = api as unknown as { default: unknown };
    // elk-api.js is a UMD bundle: the constructor is its default export, or that one's default
    const Ctor = ((mod.default as { default?: unknown }).default ?? mod.default) as new (o: {
      workerUrl: string;
    }) => ELK;
    return new Ctor({ workerUrl: (worker as { default: string }).default });
  });
  return elk;
}

/** Options for a left-to-right tree: host bridges at the left, endpoints at the right. */
export const TREE_LAYOUT: Readonly<Record<string, string>> = {
  "elk.algorithm": "layered",
  "elk.direction": "RIGHT",
  "elk.edgeRouting": "ORTHOGONAL",
  "elk.layered.spacing.nodeNodeBetweenLayers": "70",
  "elk.spacing.nodeNode": "14",
  "elk.spacing.edgeLabel": "2",
  "elk.spacing.componentComponent": "28",
  "elk.layered.nodePlacement.strategy": "BRANDES_KOEPF",
  "elk.layered.considerModelOrder.strategy": "NODES_AND_EDGES",
  "elk.edgeLabels.inline": "false",
  "elk.separateConnectedComponents": "true",
};

export async function layout(graph: ElkNode): Promise<ElkNode> {
  return (await load()).layout(graph);
}
