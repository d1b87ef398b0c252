"""The sub-commands: each loads what it needs, measures, draws one PNG and writes the
numbers behind it as JSON beside it. args: the parsed command line (cli.py)."""
import os

import numpy as np
from tqdm import tqdm

from minivgg import nn
from minivgg.errors import UserError
from minivgg.visualise import common, evolution as evo, filters as flt, maps, neighbours as nb
from minivgg.visualise import occlusion as occ, top5 as t5


def _written(args, out, stem, obj, extra=()):
    """The JSON beside the PNG just drawn; with --colours, the PNG (and the command's
    `extra` PNGs) rewritten with a palette."""
    png, js = os.path.join(out, stem + ".png"), os.path.join(out, stem + ".json")
    for path in [png, *extra] if args.colours else []:
        common.quantise(path, args.colours)
    common.write_json(js, obj)
    print(f"wrote {png}, {js}")
    return 0


def _title(net, what):
    return f"{os.path.basename(net.path)} ({net.model.config}): {what}"


def filters(args):
    net = common.load(args.checkpoint)
    m = flt.measure(net.model, net.meta)
    out = common.out_dir(args)
    towers = "" if len(m["groups"]) == 1 else " / ".join(
        f"tower {t + 1}: {mean:.3f}" for t, mean in enumerate(m["means"]) if mean is not None)
    flt.draw(m, os.path.join(out, "filters.png"),
             _title(net, f"{m['layer']} kernels, colourfulness" + (f" ({towers})" if towers
                                                                    else "")))
    s = flt.summary(m)
    for t in s["towers"]:
        mean = t["mean_colourfulness"]
        print(f"{m['layer']} kernels {t['filters'][0]}-{t['filters'][1] - 1}: mean "
              f"colourfulness {'n/a' if mean is None else f'{mean:.3f}'}")
    if s["towers_differ_p"] is not None:
        print(f"towers differ: permutation p = {s['towers_differ_p']:.4f}")
    return _written(args, out, "filters", dict(checkpoint=net.path, **s))


def top5(args):
    from minivgg.data import rescale
    from minivgg.evaluate import posteriors
    net = common.load(args.checkpoint, args.scale)
    src = common.source_for(args, net)
    classes = list(net.meta["classes"])
    chosen = _hardest(net, src, min(args.hardest, args.count))
    chosen += [i for i in common.pick(src.labels, args.count + len(chosen), args.seed)
               if i not in chosen][:args.count - len(chosen)]
    entries, shown = [], []
    for i in tqdm(chosen, desc="top-5", unit="img", leave=False, dynamic_ncols=True):
        img = src.image(i)
        probs = posteriors(net, img, args.method, args.flip)
        entries.append(t5.entry(src.paths[i], int(src.labels[i]), probs, classes))
        shown.append(rescale(img, net.scales[0]))
    out = common.out_dir(args)
    in5 = [e["label_rank"] is not None and e["label_rank"] <= 5 for e in entries]
    t5.draw(shown, entries, os.path.join(out, "top5.png"),
            _title(net, f"top-5 ({args.method}, Q={net.scales[0]}); the true label in red"))
    return _written(args, out, "top5", dict(checkpoint=net.path, method=args.method,
                                      scale=net.scales[0], images=entries,
                                      label_in_top5=int(sum(in5))))


def _hardest(net, src, n, batch_size=128):
    """The n labelled images whose true class the net finds least probable on their view
    (AlexNet's panel has its doubtful cases too: "genuine ambiguity", sect. 6.1)."""
    known = [int(i) for i in np.flatnonzero(src.labels >= 0)]
    if n < 1 or not known:
        return []
    p = []
    for s in range(0, len(known), batch_size):
        views = [common.view(src.image(i), net) for i in known[s:s + batch_size]]
        probs = common.probabilities(net, common.batch(views, net.meta))
        p.append(probs[np.arange(len(views)), src.labels[known[s:s + batch_size]]])
    order = np.lexsort((known, np.concatenate(p)))
    return [known[j] for j in order[:n]]


def _penultimate(net, src, indices, batch_size=128):
    """(len(indices), fc_width) last-hidden-layer activations and (.., pixels) of views."""
    from minivgg import backend
    from minivgg.features import penultimate
    from minivgg.tape import Tensor, no_grad
    dense, feats, pix = net.model.dense(), [], []
    if isinstance(getattr(dense, "classifier", None), nn.Sequential):
        hidden = lambda x: penultimate(dense, x)  # noqa: E731  fc7 after its ReLU
    elif hasattr(net.model, "hidden_features"):  # NiN, GoogLeNet: the pooled last maps
        hidden = net.model.hidden_features
    else:
        raise UserError(f"config {net.model.config} has no hidden layer (AlexNet's fc7) "
                        "to compare images in")
    for s in tqdm(range(0, len(indices), batch_size), desc="activations", unit="batch",
                  leave=False, dynamic_ncols=True):
        views = [common.view(src.image(i), net) for i in indices[s:s + batch_size]]
        with no_grad():  # penultimate starts at the convs: a 1-channel net's grey level first
            x = net.model.input_channels(Tensor(common.batch(views, net.meta))).data
        feats.append(backend.to_host(hidden(x)))
        pix.append(np.stack(views).reshape(len(views), -1))
    return np.concatenate(feats).astype(np.float64), np.concatenate(pix).astype(np.float64)


def _sources(args, net):
    """(queries, database, same set?): a train/val tree's --split against its
    --database-split; one folder against itself, each query left out of its own
    neighbours."""
    root, classes = common.data_root(args, net), list(net.meta["classes"])
    queries = common.read_source(root, args.split, classes)
    if not common.is_tree(root) or args.database_split == args.split:
        return queries, queries, True
    return queries, common.read_source(root, args.database_split, classes), False


def neighbours(args):
    net = common.load(args.checkpoint, args.scale)
    queries, db, same_set = _sources(args, net)
    q_idx = list(range(len(queries)))
    db_idx = list(range(len(db)))
    qf, qp = _penultimate(net, queries, q_idx)
    df, dp = (qf, qp) if same_set else _penultimate(net, db, db_idx)
    by_f, dist_f = nb.nearest(qf, df, args.k, same_set)
    by_p, dist_p = nb.nearest(qp, dp, args.k, same_set)
    rates = dict(features=nb.match_rates(by_f, queries.labels, db.labels),
                 pixels=nb.match_rates(by_p, queries.labels, db.labels))
    shown = common.pick(queries.labels, args.count, args.seed)
    rows = [_neighbour_row(net, queries, db, i, by_f[i], by_p[i]) for i in shown]
    out = common.out_dir(args)
    nf, npx = rates["features"][0], rates["pixels"][0]
    what = f"{len(queries)} queries vs {len(db)} images" + (
        "" if nf is None else f"; nearest has the class: features {100 * nf:.1f}%, "
        f"pixels {100 * npx:.1f}%")
    print(what)
    nb.draw(rows, os.path.join(out, "neighbours.png"), _title(net, what))
    return _written(args, out, "neighbours", dict(
        checkpoint=net.path, queries=queries.root, database=db.root, k=len(by_f[0]),
        n_queries=len(queries), n_database=len(db), fc_width=qf.shape[1],
        nearest_same_class=dict(features=nf, pixels=npx),
        k_same_class=dict(features=rates["features"][1], pixels=rates["pixels"][1]),
        shown=[dict(query=queries.paths[i],
                    features=[[db.paths[j], float(d)] for j, d in zip(by_f[i], dist_f[i])],
                    pixels=[[db.paths[j], float(d)] for j, d in zip(by_p[i], dist_p[i])])
               for i in shown]))


def _neighbour_row(net, queries, db, i, by_f, by_p):
    label = queries.labels[i]

    def cell(j):
        same = None if label < 0 or db.labels[j] < 0 else bool(db.labels[j] == label)
        return common.view(db.image(j), net), same
    return (common.view(queries.image(i), net), [cell(j) for j in by_f],
            [cell(j) for j in by_p])


def deconv(args):
    net = common.load(args.checkpoint, args.scale)
    upto, row = common.find_layer(net.model, args.layer or _default_layer(net.model))
    for k in args.maps or []:
        common.check_map(row, k)
    src = common.source_for(args, net)
    strength = maps.strengths(net, src, upto)
    chosen = args.maps or maps.best_maps(strength, args.count)
    per_map = [(k, maps.projections(net, src, upto, k, maps.top_images(strength, k, args.top)))
               for k in chosen]
    out = common.out_dir(args)
    stem = f"deconv_{row.name}"
    maps.draw(per_map, row.name, os.path.join(out, stem + ".png"),
              _title(net, f"{row.name}, top {args.top} of {len(src)} images per map"))
    return _written(args, out, stem, dict(
        checkpoint=net.path, layer=row.name, images=len(src), receptive_field=row.rf,
        maps=[dict(map=k, top=[dict(path=src.paths[pr["index"]], activation=pr["value"],
                                    position=pr["position"], box=pr["box"])
                               for pr in prs]) for k, prs in per_map]))


def _default_layer(model):
    """The last conv layer's activation (ZFNet's deepest projections are of layer 5)."""
    rows = common.feature_rows(model, "deconv")
    last = max(i for i, r in enumerate(rows) if r.kind == "conv")
    return rows[min(last + 1, len(rows) - 1)].name


def occlusion(args):
    net = common.load(args.checkpoint, args.scale)
    size = args.size if args.size is not None else max(1, net.crop // 4)
    stride = args.stride if args.stride is not None else max(1, net.crop // 16)
    occ.check(size, stride, net.crop)
    src = common.source_for(args, net)
    classes = list(net.meta["classes"])
    rows, entries = [], []
    for i in tqdm(common.pick(src.labels, args.count, args.seed), desc="occlusion",
                  unit="img", leave=False, dynamic_ncols=True):
        v = common.view(src.image(i), net)
        x = common.batch([v], net.meta)
        p0 = common.probabilities(net, x)[0]
        label = int(src.labels[i]) if src.labels[i] >= 0 else int(p0.argmax())
        prob, best, best_p = occ.sensitivity(net, x, label, size, stride)
        rows.append((v, prob, best, classes[label], float(p0[label])))
        entries.append(dict(path=src.paths[i], cls=classes[label],
                            labelled=bool(src.labels[i] >= 0), unoccluded=float(p0[label]),
                            probability=prob.round(5), most_probable=best,
                            most_probable_p=best_p.round(5), lowest=float(prob.min())))
    out = common.out_dir(args)
    occ.draw(rows, classes, size, stride, os.path.join(out, "occlusion.png"),
             _title(net, f"occlusion: {size}px grey square, stride {stride}"))
    return _written(args, out, "occlusion", dict(checkpoint=net.path, size=size, stride=stride,
                                           crop=net.crop, images=entries))


def evolution(args):
    found = evo.snapshots(args.run_dir)
    if args.out is None:
        args.out = os.path.join(args.run_dir, "visualise")
    rows, columns, summary, src = [], [], [], None
    for epoch, path in tqdm(found, desc="snapshots", unit="epoch", leave=False,
                            dynamic_ncols=True):
        net = common.load(path, args.scale)
        m = flt.measure(net.model, net.meta)
        rows.append((epoch, m))
        summary.append(dict(epoch=epoch, path=path, **flt.summary(m),
                            **evo.change(rows[0], (epoch, m))))
        _say_epoch(summary[-1])
        if args.layer:
            src = src or common.source_for(args, net)  # read once, for every epoch
            columns.append((epoch, _strongest_per_map(args, net, src)))
    out = common.out_dir(args)
    title = f"{args.run_dir}: {net.model.config}, {rows[0][1]['layer']} kernels by epoch"
    evo.draw_filters(rows, os.path.join(out, "evolution.png"), title, args.count)
    result = dict(run_dir=args.run_dir, epochs=summary)
    if args.layer:
        evo.draw_projections(columns, args.maps, args.layer,
                             os.path.join(out, "evolution_projections.png"), args.run_dir)
        result["projections"] = [dict(epoch=e, maps={str(k): dict(
            path=pr["path"], activation=pr["value"], position=pr["position"])
            for k, pr in prs.items()}) for e, prs in columns]
    extra = [os.path.join(out, "evolution_projections.png")] if args.layer else []
    return _written(args, out, "evolution", result, extra)


def _say_epoch(e):
    """One line per snapshot: colourfulness per tower, and of the change since epoch 0."""
    def towers(ts):
        return " / ".join("n/a" if t is None else f"{t:.3f}" for t in ts)
    line = (f"epoch {e['epoch']}: colourfulness "
            f"{towers(t['mean_colourfulness'] for t in e['towers'])}")
    if e["towers_differ_p"] is not None:
        line += f" (p {e['towers_differ_p']:.2f})"
    if "change" in e:
        c = e["change"]
        line += (f"; of the change since epoch 0: {towers(c['tower_means'])}"
                 + (f" (p {c['towers_differ_p']:.2f})" if c["towers_differ_p"] is not None
                    else "") + f", its size {c['relative_size']:.2f} of the initial kernels")
    tqdm.write(line)


def _strongest_per_map(args, net, src):
    """{map: the projection of its strongest activation over all the images}."""
    upto, row = common.find_layer(net.model, args.layer)
    args.maps = args.maps or [0, 1, 2, 3]
    for k in args.maps:
        common.check_map(row, k)
    strength = maps.strengths(net, src, upto, progress=False)
    out = {}
    for k in args.maps:
        pr = maps.projections(net, src, upto, k, maps.top_images(strength, k, 1))[0]
        out[k] = dict(pr, path=src.paths[pr["index"]])
    return out
