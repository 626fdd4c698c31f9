#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
# Turns the runs recorded by run-bench.sh (fio JSON per run, daemon CPU ticks, metadata) into
# the markdown table: best run per target, layerfs/qsd ratio, the target and whether it is met.
import argparse
import json
import sys

# Workloads whose target is 1.5x qemu-storage-daemon; the others have 1.25x (issue 3).
FAST_TARGET = {"randread-4k-qd32", "randwrite-4k-qd32", "read-1m-qd8", "write-1m-qd8"}


def load_meta(path):
    meta = {}
    with open(path) as f:
        for line in f:
            k, _, v = line.rstrip("\n").partition("\t")
            meta[k] = v
    return meta


def load_runs(path, ramp, clk_tck):
    """{(set, workload, target): [run dicts in run order]}"""
    runs = {}
    with open(path) as f:
        next(f)
        for line in f:
            s, wl, target, run, js, ticks, load1 = line.rstrip("\n").split("\t")
            with open(js) as jf:
                text = jf.read()
            # fio may print warnings before the JSON object
            data = json.loads(text[text.index("{"):])
            job = data["jobs"][0]
            iops = job["read"]["iops"] + job["write"]["iops"]
            bw = job["read"]["bw_bytes"] + job["write"]["bw_bytes"]
            secs = job.get("job_runtime", 0) / 1000.0 + ramp
            ticks = int(ticks)
            cpu_us_per_io = None
            if target != "raw" and iops > 0 and secs > 0:
                cpu_us_per_io = ticks * 1e6 / clk_tck / (iops * secs)
            lat = None
            if wl.endswith("qd1"):
                lat = job["read"]["clat_ns"]["mean"] / 1000.0
            runs.setdefault((s, wl, target), []).append({
                "run": int(run), "iops": iops, "mbs": bw / 1e6, "cpu": cpu_us_per_io,
                "cpu_pct": ticks * 100.0 / clk_tck / secs if secs else 0.0,
                "lat_us": lat, "load1": load1,
            })
    return runs


def best(runs, key):
    r = runs.get(key)
    return max(r, key=lambda x: x["iops"]) if r else None


def fmt_iops(v):
    return "%.0f" % v if v >= 100 else "%.1f" % v


def fmt_mbs(v):
    return "%.0f" % v if v >= 100 else "%.1f" % v


def target_of(wl, raw, qsd):
    """(target IOPS, description) for layerfs, or (None, why not)."""
    if qsd is None:
        return None, "no qsd run"
    mult = 1.5 if wl in FAST_TARGET else 1.25
    want = mult * qsd["iops"]
    if raw is not None and want > raw["iops"]:
        return 0.9 * raw["iops"], ">= 90%% raw (%s)" % fmt_iops(0.9 * raw["iops"])
    return want, ">= %gx qsd (%s)" % (mult, fmt_iops(want))


def cell(r):
    if r is None:
        return ["-", "-"]
    return [fmt_iops(r["iops"]), fmt_mbs(r["mbs"])]


def table(rows, left=1):
    """A markdown table; the first LEFT columns are left-aligned, the rest right-aligned."""
    out = []
    out.append("| " + " | ".join(rows[0]) + " |")
    out.append("|" + "|".join("---" if i < left else "--:" for i in range(len(rows[0]))) + "|")
    for r in rows[1:]:
        out.append("| " + " | ".join(r) + " |")
    return "\n".join(out)


def compare_table(runs, s, workloads, raw_set, lf_target, lf_name, qsd_name):
    rows = [["workload", "raw IOPS", "raw MB/s", qsd_name + " IOPS", qsd_name + " MB/s",
             lf_name + " IOPS", lf_name + " MB/s", "layerfs/qsd", "target", "met"]]
    met_count = [0, 0]
    for wl in workloads:
        raw = best(runs, (raw_set, wl, "raw"))
        qsd = best(runs, (s, wl, "qsd"))
        lf = best(runs, (s, wl, lf_target))
        if qsd is None and lf is None:
            continue
        ratio = "%.2f" % (lf["iops"] / qsd["iops"]) if lf and qsd and qsd["iops"] else "-"
        want, desc = target_of(wl, raw, qsd)
        if lf is None or want is None:
            met = "-"
        else:
            ok = lf["iops"] >= want
            met_count[0] += ok
            met_count[1] += 1
            met = "met" if ok else "**not met**"
        name = wl + (" (raw buffered)" if wl == "write-3000-unaligned" else "")
        rows.append([name] + cell(raw) + cell(qsd) + cell(lf) + [ratio, desc, met])
    return table(rows), met_count


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--meta", required=True)
    ap.add_argument("--runs", required=True)
    ap.add_argument("--workloads", required=True)
    ap.add_argument("--sets", required=True)
    a = ap.parse_args()
    meta = load_meta(a.meta)
    ramp = float(meta.get("method", "0 s per run after 0 s").split("after ")[1].split(" ")[0])
    runs = load_runs(a.runs, ramp, int(meta.get("clk_tck", "100")))
    workloads = a.workloads.split(",")
    sets = a.sets.split(",")
    p = print

    p("## layerfs benchmark, %s" % meta.get("date", "?"))
    p()
    p("- machine: %s; kernel %s; %s" % (meta.get("cpu"), meta.get("kernel"), meta.get("fs")))
    p("- load average (1/5/15 min) at start %s, at end %s" %
      (meta.get("load_start"), meta.get("load_end")))
    p("- %s; %s; %s" % (meta.get("fio"), meta.get("qsd"), meta.get("layerfs")) +
      ("; commit %s" % meta["commit"] if "commit" in meta else ""))
    p("- method: %s; IOPS and MB/s (10^6 B/s) of the best run; \"raw\" is the file itself "
      "with O_DIRECT, the ceiling; qsd is qemu-storage-daemon's FUSE export with "
      "cache.direct=on,aio=io_uring; layerfs I/O threads: %s" %
      (meta.get("method"), meta.get("threads")))
    p("- targets: layerfs >= 1.5x qsd on QD32 and sequential workloads, >= 1.25x on the rest, "
      "or >= 90% of raw where that would pass the ceiling")
    p()

    if "single" in sets:
        t, (met, n) = compare_table(runs, "single", workloads, "single", "layerfs",
                                    "layerfs", "qsd")
        p("### One raw layer (file driver, O_DIRECT): %d of %d targets met" % (met, n))
        p()
        p(t)
        p()
        rss = []
        if "lf_hwm_kib" in meta:
            rss.append("layerfs %.1f MiB" % (int(meta["lf_hwm_kib"]) / 1024))
        if "qsd_hwm_kib" in meta:
            rss.append("qemu-storage-daemon %.1f MiB" % (int(meta["qsd_hwm_kib"]) / 1024))
        if rss:
            p("Peak RSS (VmHWM) over the whole set: " + ", ".join(rss) + ".")
            p()

    if "overlay" in sets:
        p("### Two layers: layerfs overlay over raw vs qemu-storage-daemon qcow2 over raw "
          "(64 KiB blocks, fresh overlays, reads first)")
        p()
        if "overlay_na" in meta:
            p("n/a (%s)" % meta["overlay_na"])
        else:
            t, (met, n) = compare_table(runs, "overlay", workloads, "single", "layerfs",
                                        "layerfs", "qsd")
            p("%d of %d targets met; raw is the single-file ceiling from the table above." %
              (met, n))
            p()
            p(t)
            p()
            p("Peak RSS (VmHWM): layerfs %.1f MiB, qemu-storage-daemon %.1f MiB." %
              (int(meta.get("lfo_hwm_kib", 0)) / 1024, int(meta.get("qsdo_hwm_kib", 0)) / 1024))
        p()

    if "nbd" in sets:
        p("### Two layers over NBD: layerfs overlay over driver = nbd vs qemu-storage-daemon "
          "qcow2 over an nbd blockdev (the same nbdkit file export of the raw file, Unix socket; "
          "64 KiB blocks, fresh overlays, reads first)")
        p()
        t, (met, n) = compare_table(runs, "nbd", workloads, "single", "layerfs",
                                    "layerfs", "qsd")
        p("%d of %d targets met; raw is the single-file ceiling (if that set ran)." % (met, n))
        p()
        p(t)
        p()
        p("Peak RSS (VmHWM): layerfs %.1f MiB, qemu-storage-daemon %.1f MiB." %
          (int(meta.get("lfn_hwm_kib", 0)) / 1024, int(meta.get("qsdn_hwm_kib", 0)) / 1024))
        if "lfn_figures" in meta:
            p()
            p("layerfs's nbd driver at exit: %s" % meta["lfn_figures"])
        p()

    if "vhost-user" in sets:
        p("### layerfs's virtio-blk-vhost-user driver (over qemu-storage-daemon's vhost-user-blk "
          "export of the same file) vs qemu-storage-daemon's FUSE export")
        p()
        if "vhost_user_na" in meta:
            p("n/a (%s)" % meta["vhost_user_na"])
        else:
            t, _ = compare_table(runs, "single", workloads, "single", "layerfs-vu",
                                 "layerfs-vu", "qsd")
            p(t)
            p()
            if "lfvu_hwm_kib" in meta:
                p("Peak RSS (VmHWM): layerfs %.1f MiB (not counting the vhost-user server)." %
                  (int(meta["lfvu_hwm_kib"]) / 1024))
        p()

    # --before: the same workloads on another layerfs binary, in the same turns.
    if "before" in meta:
        p("### Before and after: %s vs %s" % (meta.get("before"), meta.get("layerfs")))
        p()
        rows = [["set", "workload", "before IOPS", "after IOPS", "after/before",
                 "before CPU us/IO", "after CPU us/IO"]]
        for s in ("single", "overlay"):
            for wl in workloads:
                b = best(runs, (s, wl, "before"))
                a = best(runs, (s, wl, "layerfs"))
                if not a or not b:
                    continue
                cpu = lambda r: "%.1f" % r["cpu"] if r["cpu"] is not None else "-"
                rows.append([s, wl, fmt_iops(b["iops"]), fmt_iops(a["iops"]),
                             "%.2f" % (a["iops"] / b["iops"]) if b["iops"] else "-",
                             cpu(b), cpu(a)])
        p(table(rows))
        p()

    # Daemon CPU per I/O and QD1 latency: steadier than IOPS on a busy machine.
    cols = []
    for s, tg, label in [("single", "qsd", "qsd"), ("single", "layerfs", "layerfs"),
                         ("single", "layerfs-vu", "layerfs-vu"), ("overlay", "qsd", "qsd qcow2"),
                         ("overlay", "layerfs", "layerfs overlay"), ("nbd", "qsd", "qsd qcow2/nbd"),
                         ("nbd", "layerfs", "layerfs overlay/nbd")]:
        if any((s, wl, tg) in runs for wl in workloads):
            cols.append((s, tg, label))
    if cols:
        p("### Daemon CPU time per I/O (all threads, microseconds; best run)")
        p()
        rows = [["workload"] + [c[2] for c in cols]]
        for wl in workloads:
            r = [wl]
            for s, tg, _ in cols:
                b = best(runs, (s, wl, tg))
                r.append("%.1f" % b["cpu"] if b and b["cpu"] is not None else "-")
            rows.append(r)
        lat = ["QD1 mean latency (us)"]
        for s, tg, _ in cols:
            b = best(runs, (s, "randread-4k-qd1", tg))
            lat.append("%.1f" % b["lat_us"] if b and b["lat_us"] is not None else "-")
        if "randread-4k-qd1" in workloads:
            rows.append(lat)
        p(table(rows))
        p()
        raw = best(runs, ("single", "randread-4k-qd1", "raw"))
        if raw and raw["lat_us"] is not None:
            p("Raw file QD1 mean latency: %.1f us." % raw["lat_us"])
            p()

    p("### Every run (IOPS, in run order; load1 when it started)")
    p()
    rows = [["set", "workload", "target", "runs (IOPS @ load1)"]]
    for (s, wl, tg), rs in runs.items():
        rows.append([s, wl, tg, ", ".join("%s @ %s" % (fmt_iops(r["iops"]), r["load1"])
                                          for r in sorted(rs, key=lambda x: x["run"]))])
    p(table(rows, left=4))
    return 0


if __name__ == "__main__":
    sys.exit(main())
