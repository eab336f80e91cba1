// castvit hierarchy viewer: everything it shows is embedded in this page.
//
// Each image is a JSON script element of class "castvit-image" holding a
// JPEG of the picture, a PNG of the level-0 (superpixel) ids (id = R·256 + G), and
// the parent of every segment at every level. Levels 1.. are composed here.
// Hover highlights a segment with its ancestors and children; a click locks the
// highlight on that point, so moving the level slider walks up and down the
// segments that contain it.
(() => {
  'use strict';
  const $ = (id) => document.getElementById(id);
  const meta = JSON.parse($('castvit-meta').textContent);
  const entryNodes = Array.from(document.querySelectorAll('script.castvit-image'));
  const canvas = $('view');
  const ctx = canvas.getContext('2d');
  const slider = $('level');
  const FOCUS = [255, 176, 0], PARENT = [255, 63, 209], CHILD = [0, 229, 255];

  const state = { image: -1, level: 1, mode: 'image', hover: null, lock: null };
  let cur = null;          // the prepared current image
  let frame = null;        // ImageData reused between renders
  let lastKey = '';        // what the last render showed
  const prepared = new Map();

  // ---------------------------------------------------------------- data
  async function decodePixels(url, w, h) {
    const img = new Image();
    img.src = url;
    await img.decode();
    const c = document.createElement('canvas');
    c.width = w; c.height = h;
    const g = c.getContext('2d', { willReadFrequently: true });
    g.imageSmoothingEnabled = false;
    g.drawImage(img, 0, 0, w, h);
    return g.getImageData(0, 0, w, h).data;
  }

  async function prepare(index) {
    if (prepared.has(index)) return prepared.get(index);
    const e = JSON.parse(entryNodes[index].textContent);
    const [h, w] = e.display_size;
    const n = w * h;
    const [rgba, spx] = await Promise.all([decodePixels(e.image, w, h), decodePixels(e.superpixels, w, h)]);
    const sp = new Int32Array(n);
    for (let p = 0; p < n; p++) sp[p] = spx[4 * p] * 256 + spx[4 * p + 1];
    const L = e.parents.length + 1;
    const nIds = e.parents[0].length;
    // tables[s][i]: level-s segment of level-0 id i
    const tables = [Int32Array.from({ length: nIds }, (_, i) => i)];
    for (let s = 1; s < L; s++) {
      const prev = tables[s - 1], par = e.parents[s - 1], t = new Int32Array(nIds);
      for (let i = 0; i < nIds; i++) t[i] = prev[i] >= 0 ? par[prev[i]] : -1;
      tables.push(t);
    }
    const labels = tables.map((t) => {
      const a = new Int32Array(n);
      for (let p = 0; p < n; p++) a[p] = t[sp[p]];
      return a;
    });
    // per level: mean display colour of each segment
    const means = labels.map((lab) => {
      let max = 0;
      for (let p = 0; p < n; p++) if (lab[p] > max) max = lab[p];
      const acc = new Float64Array((max + 1) * 4);
      for (let p = 0; p < n; p++) {
        const k = lab[p] * 4;
        acc[k] += rgba[4 * p]; acc[k + 1] += rgba[4 * p + 1]; acc[k + 2] += rgba[4 * p + 2]; acc[k + 3] += 1;
      }
      const out = new Uint8ClampedArray((max + 1) * 3);
      for (let i = 0; i <= max; i++) {
        const c = acc[4 * i + 3] || 1;
        out[3 * i] = acc[4 * i] / c; out[3 * i + 1] = acc[4 * i + 1] / c; out[3 * i + 2] = acc[4 * i + 2] / c;
      }
      return out;
    });
    // per level: id -> {area, bbox, parent} at full resolution, and children lists
    const segs = e.levels.map((lv) => {
      const m = new Map();
      for (const [id, area, x, y, bw, bh, parent] of lv.segments) {
        m.set(id, { id, area, bbox: [x, y, bw, bh], parent, children: [] });
      }
      return m;
    });
    for (let s = 1; s < L; s++) {
      for (const seg of segs[s - 1].values()) {
        const up = segs[s].get(seg.parent);
        if (up) up.children.push(seg.id);
      }
    }
    for (const m of segs) for (const seg of m.values()) seg.children.sort((a, b) => a - b);
    const d = { e, w, h, n, rgba, labels, means, segs, L };
    prepared.set(index, d);
    if (prepared.size > 4) {  // keep memory bounded for big folders
      for (const k of prepared.keys()) { if (k !== index) { prepared.delete(k); break; } }
    }
    return d;
  }

  // ---------------------------------------------------------------- focus
  function focusPoint() { return state.lock || state.hover; }

  function focusSegment() {
    const pt = focusPoint();
    if (!cur || !pt) return null;
    const id = cur.labels[state.level][pt.y * cur.w + pt.x];
    const ancestors = [];
    let a = id;
    for (let s = state.level; s < cur.L - 1; s++) {
      a = cur.e.parents[s][a];
      ancestors.push({ level: s + 1, id: a });
    }
    const seg = cur.segs[state.level].get(id);
    const children = state.level > 0 && seg ? seg.children : [];
    return { level: state.level, id, ancestors, children, locked: !!state.lock, seg };
  }

  // ---------------------------------------------------------------- drawing
  function render() {
    if (!cur) return;
    const f = focusSegment();
    const key = [state.image, state.level, state.mode, f ? f.id : '', f ? f.locked : ''].join('|');
    if (key === lastKey) return;
    lastKey = key;
    const { w, h, rgba, labels, means } = cur;
    const L = state.level;
    const lab = labels[L];
    const below = L > 0 ? labels[L - 1] : null;
    const anc = f ? f.ancestors.map((a) => ({ lab: labels[a.level], id: a.id })) : [];
    const out = frame.data;
    const mean = means[L];
    const drawEdges = state.mode !== 'plain';
    const fid = f ? f.id : -1;
    const blend = (p, c, a) => {
      out[p] = out[p] * (1 - a) + c[0] * a; out[p + 1] = out[p + 1] * (1 - a) + c[1] * a;
      out[p + 2] = out[p + 2] * (1 - a) + c[2] * a;
    };
    for (let y = 0, p = 0; y < h; y++) {
      for (let x = 0; x < w; x++, p++) {
        const q = 4 * p, l = lab[p];
        if (state.mode === 'mean') {
          out[q] = mean[3 * l]; out[q + 1] = mean[3 * l + 1]; out[q + 2] = mean[3 * l + 2];
        } else {
          out[q] = rgba[q]; out[q + 1] = rgba[q + 1]; out[q + 2] = rgba[q + 2];
        }
        out[q + 3] = 255;
        const r = x + 1 < w ? p + 1 : -1, d = y + 1 < h ? p + w : -1;
        const edge = (r >= 0 && lab[r] !== l) || (d >= 0 && lab[d] !== l);
        if (fid >= 0) {
          const inF = l === fid;
          if (inF) blend(q, FOCUS, 0.42);
          else if (anc.length && anc[0].lab[p] === anc[0].id) blend(q, PARENT, 0.3);
          // outline of the focused segment
          if (inF ? ((r >= 0 && lab[r] !== fid) || (d >= 0 && lab[d] !== fid))
                  : ((r >= 0 && lab[r] === fid) || (d >= 0 && lab[d] === fid))) {
            out[q] = FOCUS[0]; out[q + 1] = FOCUS[1]; out[q + 2] = FOCUS[2];
            continue;
          }
          if (inF && below) {
            const b = below[p];
            if ((r >= 0 && lab[r] === fid && below[r] !== b) || (d >= 0 && lab[d] === fid && below[d] !== b)) {
              out[q] = CHILD[0]; out[q + 1] = CHILD[1]; out[q + 2] = CHILD[2];
              continue;
            }
          }
          let drawn = false;
          for (let k = 0; k < anc.length && !drawn; k++) {
            const A = anc[k].lab, id = anc[k].id, inA = A[p] === id;
            if (inA ? ((r >= 0 && A[r] !== id) || (d >= 0 && A[d] !== id))
                    : ((r >= 0 && A[r] === id) || (d >= 0 && A[d] === id))) {
              blend(q, PARENT, k === 0 ? 1 : Math.max(0.45, 0.85 - 0.2 * k));
              drawn = true;
            }
          }
          if (drawn) continue;
        }
        if (edge && drawEdges) blend(q, [255, 255, 255], 0.75);
      }
    }
    ctx.putImageData(frame, 0, 0);
    updateInfo(f);
  }

  // ---------------------------------------------------------------- panel
  const fmt = (v) => v.toLocaleString('en-US');

  function chip(text, cls, onClick) {
    const b = document.createElement('button');
    b.className = 'chip ' + cls;
    b.textContent = text;
    b.addEventListener('click', onClick);
    return b;
  }

  function facts(dl, rows) {
    dl.replaceChildren();
    for (const [k, v] of rows) {
      const dt = document.createElement('dt'); dt.textContent = k;
      const dd = document.createElement('dd'); dd.textContent = v;
      dl.append(dt, dd);
    }
  }

  function levelName(s) { return s === 0 ? 'superpixels' : `level ${s}`; }

  function updateInfo(f) {
    const info = $('info');
    const ancBox = $('ancestors'), chBox = $('children');
    ancBox.replaceChildren(); chBox.replaceChildren();
    if (!f) {
      $('segment-title').textContent = '–';
      $('status').textContent = 'hover over the image';
      facts($('segment-facts'), []);
      Object.assign(info.dataset, { level: state.level, segment: '', ancestors: '', children: '', locked: 'false' });
      return;
    }
    const [H, W] = cur.e.size;
    $('segment-title').textContent = `Level ${f.level} · segment ${f.id}`;
    $('status').textContent = f.locked ? 'locked: click it again or press Esc to release'
      : 'click to lock it (then the chips below jump to its ancestors and children)';
    const seg = f.seg;
    facts($('segment-facts'), seg ? [
      ['area', `${fmt(seg.area)} px (${(100 * seg.area / (H * W)).toFixed(1)}%)`],
      ['bbox', `x ${seg.bbox[0]}, y ${seg.bbox[1]}, ${seg.bbox[2]}×${seg.bbox[3]}`],
      ['parent', seg.parent === null || seg.parent === undefined ? '— (top level)' : `${seg.parent}`],
      ['children', f.level === 0 ? '— (superpixel)' : `${f.children.length} at level ${f.level - 1}`],
    ] : []);
    for (const a of f.ancestors) {
      ancBox.append(chip(`L${a.level} · ${a.id}`, 'parent', () => setLevel(a.level)));
    }
    if (!f.ancestors.length) ancBox.textContent = 'none (top level)';
    for (const c of f.children) {
      chBox.append(chip(`L${f.level - 1} · ${c}`, 'child', () => lockOn(f.level - 1, c)));
    }
    if (!f.children.length) chBox.textContent = f.level === 0 ? 'none (superpixels are the finest level)' : 'none';
    Object.assign(info.dataset, {
      level: f.level, segment: f.id, locked: String(f.locked),
      ancestors: f.ancestors.map((a) => a.id).join(','), children: f.children.join(','),
    });
  }

  function updateLevelLabel() {
    const n = cur ? cur.e.levels[state.level].num_segments : 0;
    $('level-label').textContent = `${levelName(state.level)}: ${n} segments`;
  }

  // ---------------------------------------------------------------- actions
  function setLevel(level) {
    if (!cur) return;
    state.level = Math.max(0, Math.min(cur.L - 1, level | 0));
    slider.value = String(state.level);
    updateLevelLabel();
    render();
  }

  function lockOn(level, id) {
    // lock on a pixel of segment `id` at `level` (its most central one)
    const lab = cur.labels[level];
    const seg = cur.segs[level].get(id);
    let best = -1, bestD = Infinity;
    const cx = seg ? (seg.bbox[0] + seg.bbox[2] / 2) * cur.w / cur.e.size[1] : cur.w / 2;
    const cy = seg ? (seg.bbox[1] + seg.bbox[3] / 2) * cur.h / cur.e.size[0] : cur.h / 2;
    for (let p = 0; p < cur.n; p++) {
      if (lab[p] !== id) continue;
      const x = p % cur.w, y = (p / cur.w) | 0, dd = (x - cx) ** 2 + (y - cy) ** 2;
      if (dd < bestD) { bestD = dd; best = p; }
    }
    if (best < 0) return;  // too small to appear at the viewer's resolution
    state.lock = { x: best % cur.w, y: (best / cur.w) | 0 };
    setLevel(level);
    lastKey = '';
    render();
  }

  function pointFromEvent(ev) {
    const r = canvas.getBoundingClientRect();
    const x = Math.floor((ev.clientX - r.left) / r.width * cur.w);
    const y = Math.floor((ev.clientY - r.top) / r.height * cur.h);
    if (x < 0 || y < 0 || x >= cur.w || y >= cur.h) return null;
    return { x, y };
  }

  // The picture fills the stage; edges stay sharp when it is shown enlarged.
  function fit() {
    if (!cur) return;
    const r = $('stage').getBoundingClientRect();
    const s = Math.max(0.05, Math.min((r.width - 24) / cur.w, (r.height - 24) / cur.h));
    canvas.style.width = `${Math.floor(cur.w * s)}px`;
    canvas.style.height = `${Math.floor(cur.h * s)}px`;
    canvas.classList.toggle('pixelated', s > 1.5);
  }
  new ResizeObserver(fit).observe($('stage'));

  canvas.addEventListener('mousemove', (ev) => {
    if (!cur) return;
    state.hover = pointFromEvent(ev);
    render();
  });
  canvas.addEventListener('mouseleave', () => { state.hover = null; render(); });
  canvas.addEventListener('click', (ev) => {
    if (!cur) return;
    const pt = pointFromEvent(ev);
    if (!pt) return;
    const lab = cur.labels[state.level];
    if (state.lock && lab[state.lock.y * cur.w + state.lock.x] === lab[pt.y * cur.w + pt.x]) state.lock = null;
    else state.lock = pt;
    lastKey = '';
    render();
  });
  slider.addEventListener('input', () => setLevel(+slider.value));
  $('mode').addEventListener('change', (ev) => { state.mode = ev.target.value; render(); });
  document.addEventListener('keydown', (ev) => {
    const t = ev.target;
    if (t && (t.tagName === 'INPUT' || t.tagName === 'SELECT')) {
      if (ev.key === 'Escape') t.blur();
      return;
    }
    if (ev.key === 'ArrowLeft') setLevel(state.level - 1);
    else if (ev.key === 'ArrowRight') setLevel(state.level + 1);
    else if (ev.key === 'ArrowUp' || ev.key === 'k') selectImage(state.image - 1);
    else if (ev.key === 'ArrowDown' || ev.key === 'j') selectImage(state.image + 1);
    else if (ev.key === 'Escape') { state.lock = null; lastKey = ''; render(); }
    else return;
    ev.preventDefault();
  });

  let selecting = Promise.resolve();
  function selectImage(index) {
    if (index < 0 || index >= entryNodes.length || index === state.image) return selecting;
    document.body.dataset.ready = 'false';
    $('loading').hidden = false;
    selecting = selecting.then(async () => {
      const d = await prepare(index);
      cur = d;
      state.image = index;
      state.hover = null;
      state.lock = null;
      canvas.width = d.w; canvas.height = d.h;
      const [H, W] = d.e.size;
      frame = ctx.createImageData(d.w, d.h);
      fit();
      slider.max = String(d.L - 1);
      state.level = Math.min(state.level, d.L - 1);
      slider.value = String(state.level);
      $('image-name').textContent = d.e.name;
      document.title = `${d.e.name} · castvit`;
      const [oh, ow] = d.e.original_size;
      facts($('image-facts'), [
        ['file', d.e.source],
        ['size', `${W}×${H}` + (ow !== W || oh !== H ? ` (file: ${ow}×${oh})` : '')],
        ['model sees', `${d.e.working_size[1]}×${d.e.working_size[0]}`],
        ['model', d.e.model + (d.e.random_weights ? ' (random weights)' : '')],
        ['segments', d.e.levels.map((lv) => lv.num_segments).join(' / ')],
      ]);
      $('image-notes').replaceChildren(...d.e.notes.map((t) => {
        const li = document.createElement('li'); li.textContent = t; return li;
      }));
      for (const b of document.querySelectorAll('#picker button')) {
        b.setAttribute('aria-current', String(+b.dataset.index === index));
      }
      const btn = document.querySelector(`#picker button[data-index="${index}"]`);
      if (btn) btn.scrollIntoView({ block: 'nearest' });
      lastKey = '';
      updateLevelLabel();
      render();
      $('loading').hidden = true;
      document.body.dataset.image = String(index);
      document.body.dataset.ready = 'true';
    }).catch((err) => {
      $('loading').hidden = false;
      $('loading').textContent = `cannot show this image: ${err}`;
      document.body.dataset.ready = 'error';
      console.error(err);
    });
    return selecting;
  }

  // ---------------------------------------------------------------- start
  if (meta.random_weights) {
    const b = $('banner');
    b.hidden = false;
    b.textContent = 'Random weights: these hierarchies come from an untrained network (no --checkpoint), ' +
      'so the segments say nothing about the images.';
  }
  if (entryNodes.length > 1) {
    const picker = $('picker');
    picker.hidden = false;
    entryNodes.forEach((node, i) => {
      const b = document.createElement('button');
      b.dataset.index = String(i);
      const img = document.createElement('img');
      img.src = node.dataset.thumb;
      img.alt = '';
      const span = document.createElement('span');
      span.textContent = node.dataset.name;
      b.title = node.dataset.name;
      b.append(img, span);
      b.addEventListener('click', () => selectImage(i));
      picker.append(b);
    });
  }
  if (!entryNodes.length) {
    $('loading').textContent = 'no images in this viewer';
    document.body.dataset.ready = 'true';
  }

  window.castvitViewer = {
    get state() { return { image: state.image, level: state.level, mode: state.mode, lock: state.lock, hover: state.hover }; },
    get images() { return entryNodes.map((n) => n.dataset.name); },
    selectImage, setLevel,
    focus: () => { const f = focusSegment(); return f && { level: f.level, id: f.id, locked: f.locked,
      ancestors: f.ancestors, children: f.children.slice() }; },
    segmentAt: (x, y, level = state.level) => cur.labels[level][y * cur.w + x],
    displaySize: () => cur && [cur.h, cur.w],
  };
  if (entryNodes.length) selectImage(0);
})();
