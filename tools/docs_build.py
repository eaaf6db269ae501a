"""Build the docs site into `_site/` without Quarto and without network (run by tools/docs.sh).

1. nbdev's own notebook processing, `nbdev.serve.proc_nbs` (what `nbdev-docs` runs before Quarto),
   writes the processed notebooks to `_proc/`. It stops where `nbdev-docs` would stop.
2. The processed notebooks are staged for Sphinx + myst-nb in `.docs-cache/src/`: each under the page
   name nbdev gives it (`output-file` in its front matter: `raw.html` for `00_raw.ipynb`), with the Quarto
   cell options applied (`echo: false`, `output: asis`, `include: false`, `output: false`, `code-fold`),
   nbdev's absolute doc links made relative, saved widget state dropped, and figures copied.
3. `sphinx-build` renders them with the Furo theme, MathJax from a local copy, offline search,
   and a sidebar in the order of `nbs/sidebar.yml`.

A manifest for tools/docs_check.py is written to `.docs-cache/manifest.json`.
"""
import argparse, ast, json, os, re, shutil, sys, time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONF_DIR = ROOT/'tools'/'docs'
CACHE = ROOT/'.docs-cache'
SRC = CACHE/'src'
SITE = ROOT/'_site'
MANIFEST = CACHE/'manifest.json'
WIDGET_MIMES = ('application/vnd.jupyter.widget-view+json', 'application/vnd.jupyter.widget-state+json')
IMG_MIMES = ('image/png', 'image/jpeg', 'image/gif', 'image/svg+xml')
_re_quarto_opt = re.compile(r'^\s*#\|\s*([\w-]+)\s*:\s*(.*?)\s*$')


def log(*a): print(*a, flush=True)


# ---------------------------------------------------------------- 1. nbdev processing
def _cell_src(c): return ''.join(c['source']) if isinstance(c.get('source'), list) else c.get('source', '')

def _strip_dirs(src):
    return '\n'.join(l for l in src.splitlines() if not l.lstrip().startswith('#|')).strip()

def _locate_failure(msg, nbs):
    "The notebook and original cell of an exec_show_docs error message."
    m = re.match(r"Error(?: in notebook: (.*?))? in cell (\d+) :\n(.*)\n(\w+): ", msg, re.S)
    if not m: return None
    title, src = m.group(1), _strip_dirs(m.group(3))
    for p in nbs:
        nb = json.loads(p.read_text(encoding='utf-8'))
        for i, c in enumerate(nb['cells']):
            if c['cell_type'] == 'code' and _strip_dirs(_cell_src(c)) == src:
                return p, c.get('id'), i, title
    return None

def process(force=False, n_workers=None, verbose=False):
    from fastcore.basics import defaults
    from nbdev.config import get_config
    from nbdev.quarto import refresh_quarto_yml, nbdev_sidebar
    from nbdev.serve import proc_nbs
    from nbdev.doclinks import nbglob
    cfg = get_config()
    os.chdir(cfg.config_path)              # as nbdev's _pre_docs does
    refresh_quarto_yml()                   # nbs/nbdev.yml (ignored by git), as nbdev-docs does
    nbdev_sidebar.__wrapped__(path=cfg.nbs_path)   # a no-op with custom_sidebar = true
    # Torch in every worker would use every core: on 2 cores that doubles the time. One thread per worker.
    for v in ('OMP_NUM_THREADS', 'MKL_NUM_THREADS'): os.environ.setdefault(v, '1')
    # nbdev warns about every cell that mixes imports and code, printing it whole; --verbose shows those
    if not verbose: os.environ['PYTHONWARNINGS'] = 'ignore:Found cells containing imports'
    nbs = list(nbglob(cfg.nbs_path, func=Path))
    t = time.time()
    try: cache = proc_nbs(cfg.nbs_path, n_workers=defaults.cpus if n_workers is None else n_workers, force=force)
    except Exception as e:
        msg = str(e)
        log('\nFAIL: nbdev processing (nbdev.serve.proc_nbs, the step nbdev-docs runs before Quarto) stopped:')
        log(f'{type(e).__name__}: {msg}')
        loc = _locate_failure(msg, nbs)
        if loc:
            p, cid, i, title = loc
            log(f'\n  -> notebook {p.relative_to(cfg.config_path)}, cell id {cid} (cell {i} of the notebook)')
        log("\n  nbdev re-runs every cell that contains an import (even inside a function), in a fresh kernel that\n"
            "  runs only such cells: move the imports of a cell like this one into a cell that holds only imports.\n"
            "  nbdev-docs stops at the same place. Notebooks processed before the error are cached in _proc/.")
        sys.exit(1)
    log(f'nbdev processing: {time.time()-t:.1f} s -> {Path(cache).relative_to(cfg.config_path)}/')
    return cfg, Path(cache)


# ---------------------------------------------------------------- 2. staging for Sphinx
def pandoc_slug(title):
    "The identifier pandoc (so Quarto) gives a heading: nbdev's doc links point at these."
    s = ''.join(c for c in title if c.isalnum() or c in '_-. ' or c.isspace()).lower()
    s = '-'.join(s.split())
    s = re.sub(r'^[^a-z\u00c0-\uffff]+', '', s)   # identifiers start with a letter
    return s or 'section'

def _yaml(s):
    import yaml
    return yaml.safe_load(s) or {}

def _opts(src):
    "Quarto cell options (`#| key: value` lines at the top) and the source without any `#|` line."
    opts, keep = {}, []
    for l in src.splitlines():
        m = _re_quarto_opt.match(l)
        if m and not any(k.strip() for k in keep): opts[m.group(1)] = m.group(2).strip().strip('"\'').lower()
        if not l.lstrip().startswith('#|'): keep.append(l)
    return opts, '\n'.join(keep).strip('\n')

def _md_cell(src, cid): return {'cell_type': 'markdown', 'id': cid, 'metadata': {}, 'source': src}

def _out_text(o):
    d = o.get('data', {})
    for k in ('text/markdown', 'text/html', 'text/plain'):
        if k in d: return ''.join(d[k]) if isinstance(d[k], list) else d[k]
    return ''.join(o.get('text', '')) if o.get('output_type') == 'stream' else ''

_re_showdoc_src = re.compile(r'\[source\]\(([^)\s]+)\)\{[^}]*\}')
_re_md_img = re.compile(r'(!\[[^\]]*\]\()([^)\s]+)((?:\s+"[^"]*")?\))')
_re_html_img = re.compile(r'(<img\b[^>]*?\bsrc=["\'])([^"\']+)(["\'])', re.I)

def showdoc_md(md):
    "show_doc's markdown: no rule (CSS draws it), a class on its section, the source link beside the heading."
    src = _re_showdoc_src.search(md)
    md = _re_showdoc_src.sub('', md) if src else md
    md = re.sub(r'^\s*---\s*\n', '', md.lstrip())
    m = re.search(r'^#{2,6} .*$', md, re.M)
    if not m: return md
    link = f'\n\n{{.sd-source}}\n[source]({src.group(1)})\n' if src else '\n'
    return md[:m.start()] + '{.showdoc}\n' + m.group(0) + link + md[m.end():]


class Stager:
    def __init__(self, cfg, cache):
        self.cfg, self.cache = cfg, cache
        self.nbs_path = Path(cfg.nbs_path)
        host = (cfg.get('doc_host') or '').rstrip('/') + '/' + (cfg.get('doc_baseurl') or '').strip('/')
        self.site_url = host.rstrip('/') + '/'
        self.pages = {}          # processed notebook (relative to _proc) -> staged docname
        self.warnings, self.copied = [], set()

    # nbdev page names: `output-file` in the front matter (nbdev strips the number prefix)
    def page_name(self, rel, nb):
        fm = self.frontmatter(nb)
        out = fm.get('output-file') or re.sub(r'^\d+[a-z]?_', '', rel.stem) + '.html'
        return (rel.parent/Path(out).with_suffix('')).as_posix()

    def frontmatter(self, nb):
        c = nb['cells'][0] if nb['cells'] else None
        if c and c['cell_type'] == 'raw':
            s = _cell_src(c).strip()
            if s.startswith('---'): return _yaml(s.strip('-\n '))
        return {}

    def relink(self, text, docdir):
        "nbdev's absolute doc links to this site -> links to the staged notebook (Sphinx checks them)."
        def sub(m):
            page, frag = m.group(1), m.group(2) or ''
            doc = self.by_html.get(page)
            if doc is None: return m.group(0)
            return os.path.relpath(doc + '.ipynb', docdir or '.') + frag
        text = re.sub(re.escape(self.site_url) + r'([\w./-]+\.html)(#[^)\s"\']*)?', sub, text)
        # relative markdown links to a page (`core.html`) or a notebook (`00a_core.ipynb`), as Quarto resolves them
        def rel(m):
            target, frag = m.group(2), m.group(3) or ''
            path = os.path.normpath(os.path.join(docdir or '.', target)).replace(os.sep, '/')
            doc = self.by_html.get(path) if target.endswith('.html') else self.by_src.get(path)
            if doc is None: return m.group(0)
            return m.group(1) + os.path.relpath(doc + '.ipynb', docdir or '.') + frag + ')'
        return re.sub(r'(\]\()(?![a-z][\w+.-]*:)([\w./-]+\.(?:html|ipynb))(#[^)\s]*)?\)', rel, text)

    def fix_images(self, text, src_nb, docname):
        "Copy figures referenced by path into the staged tree (those outside nbs/ too, with a warning)."
        def fix(m):
            url = m.group(2)
            if re.match(r'^[a-z][\w+.-]*:', url, re.I) or url.startswith(('#', '/')): return m.group(0)
            path = (src_nb.parent/url).resolve()
            if not path.exists():
                self.warnings.append(f'{src_nb.relative_to(self.cfg.config_path)}: image {url} not found'); return m.group(0)
            try: rel = path.relative_to(self.nbs_path.resolve())
            except ValueError:
                rel = Path('_outside')/path.relative_to(Path(self.cfg.config_path).resolve())
                self.warnings.append(f'{src_nb.relative_to(self.cfg.config_path)}: image {url} is outside nbs/ '
                                     '(a Quarto build publishes only what is inside nbs/: move it into nbs/)')
            dst = SRC/rel
            self.copied.add(dst)
            if not dst.exists() or dst.stat().st_mtime < path.stat().st_mtime:
                dst.parent.mkdir(parents=True, exist_ok=True); shutil.copy2(path, dst)
            newurl = os.path.relpath(dst, (SRC/docname).parent)
            return m.group(1) + Path(newurl).as_posix() + m.group(3)
        return _re_html_img.sub(fix, _re_md_img.sub(fix, text))

    def stage_nb(self, rel, nb, docname, sidebar_extra=''):
        src_nb = self.nbs_path/rel
        docdir = str(Path(docname).parent)
        fm = self.frontmatter(nb)
        info = dict(src=str(src_nb.relative_to(self.cfg.config_path)), html=docname + '.html',
                    title=fm.get('title', docname), images=0, math=0, widgets=[])
        cells = []
        if fm:
            nb['cells'] = nb['cells'][1:]
            head = f"# {fm.get('title', docname)}\n"
            if fm.get('description'): head += f"\n{{.description}}\n{fm['description']}\n"
            cells.append(_md_cell(head, 'frontmatter'))
        wstate = ((nb.get('metadata', {}).get('widgets') or {}).get(WIDGET_MIMES[1]) or {}).get('state') or {}
        if wstate: info['widgets'].append(f'{len(wstate)} widget models saved in the notebook metadata')
        for c in nb['cells']:
            c.pop('has_sd', None)
            c.get('metadata', {}).pop('execution', None)
            src = _cell_src(c)
            if c['cell_type'] == 'markdown':
                src = self.fix_images(self.relink(src, docdir), src_nb, docname)
                info['math'] += len(re.findall(r'\$\$.+?\$\$|\$[^$\n]+\$', src, re.S))
                info['images'] += len(_re_md_img.findall(src)) + len(_re_html_img.findall(src))
                c['source'] = src; cells.append(c); continue
            if c['cell_type'] != 'code': cells.append(c); continue
            opts, code = _opts(src)
            if opts.get('include') == 'false': continue
            outs = []
            for o in c.get('outputs', []):
                d = o.get('data')
                if d and any(k in d for k in WIDGET_MIMES):
                    info['widgets'].append(f"cell {c.get('id')}: a widget output (rendered as its text fallback)")
                    for k in WIDGET_MIMES: d.pop(k, None)
                    if not d: continue
                if d and 'text/markdown' in d:
                    md = _out_text(o); d['text/markdown'] = self.relink(md, docdir)
                if d: info['images'] += sum(k in d for k in IMG_MIMES[:3]) or int('image/svg+xml' in d)
                outs.append(o)
            if opts.get('output') == 'false': outs = []
            tags = set(c.get('metadata', {}).get('tags', []))
            if opts.get('echo') == 'false' or not code.strip(): tags.add('remove-input')
            if opts.get('code-fold') in ('true', 'show'): tags.add('hide-input')
            if opts.get('output') == 'asis':
                # Quarto puts the raw output into the page: show_doc's documentation becomes part of the text
                if 'remove-input' not in tags:
                    cells.append({**c, 'source': code, 'outputs': [], 'metadata': {**c.get('metadata', {}), 'tags': sorted(tags | {'remove-output'})}})
                for k, o in enumerate(outs):
                    md = _out_text(o)
                    md = showdoc_md(md)
                    md = self.fix_images(self.relink(md, docdir), src_nb, docname)
                    info['math'] += len(re.findall(r'\$[^$\n]+\$', md))
                    cells.append(_md_cell(md, f"{c.get('id', 'c')}-asis{k}"))
                continue
            c['source'] = code
            c['outputs'] = outs
            c.setdefault('metadata', {})['tags'] = sorted(tags)
            cells.append(c)
        if sidebar_extra: cells.append(_md_cell(sidebar_extra, 'sidebar'))
        if info['widgets']:
            self.warnings.append(f"{info['src']}: saved ipywidgets state dropped (a dead widget without a kernel, "
                                 f"and widget JavaScript from a CDN): {'; '.join(info['widgets'])}")
        nb['cells'] = cells
        md = nb.setdefault('metadata', {})
        md.pop('widgets', None)
        md['kernelspec'] = {'name': 'python3', 'display_name': 'Python 3', 'language': 'python'}
        md['language_info'] = {'name': 'python', 'pygments_lexer': 'ipython3'}
        nb['nbformat'], nb['nbformat_minor'] = 4, max(nb.get('nbformat_minor', 5), 5)
        out = SRC/(docname + '.ipynb')
        out.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps(nb, indent=1, ensure_ascii=False)
        if not out.exists() or out.read_text(encoding='utf-8') != text: out.write_text(text, encoding='utf-8')
        self.copied.add(out)
        return info

    def sidebar(self):
        "The sidebar of nbs/sidebar.yml as hidden toctrees on the home page."
        side = _yaml((self.nbs_path/'sidebar.yml').read_text())
        contents = (side.get('website') or {}).get('sidebar', {}).get('contents', [])
        blocks, order = [], []
        def doc(entry):
            d = self.by_src.get(Path(entry).as_posix())
            if d is None: self.warnings.append(f'sidebar.yml: {entry} is not a notebook of nbs/'); return None
            order.append(d); return d
        loose = []
        for e in contents:
            if isinstance(e, str):
                d = doc(e)
                if d and d != 'index': loose.append(d)
            elif isinstance(e, dict):
                if loose: blocks.append(('', loose)); loose = []
                docs = [d for d in (doc(x) for x in e.get('contents', []) if isinstance(x, str)) if d]
                blocks.append((e.get('section', ''), docs))
        if loose: blocks.append(('', loose))
        md = ''
        for caption, docs in blocks:
            md += '\n```{toctree}\n:hidden:\n' + (f':caption: {caption}\n' if caption else '') + ''.join(d + '\n' for d in docs) + '```\n'
        return md, order

    def run(self):
        t = time.time()
        procd = sorted(p.relative_to(self.cache) for p in self.cache.rglob('*.ipynb')
                       if not any(x.startswith(('.', '_')) for x in p.relative_to(self.cache).parts))
        nbs = {rel: json.loads((self.cache/rel).read_text(encoding='utf-8')) for rel in procd}
        self.by_src = {rel.as_posix(): self.page_name(rel, nb) for rel, nb in nbs.items()}
        self.by_html = {d + '.html': d for d in self.by_src.values()}
        if 'index' not in self.by_html.values() and 'index.html' not in self.by_html: raise SystemExit('no index notebook in nbs/')
        toc, order = self.sidebar()
        pages = []
        for rel, nb in nbs.items():
            d = self.by_src[rel.as_posix()]
            pages.append(self.stage_nb(rel, nb, d, toc if d == 'index' else ''))
        # static files: our CSS and a subset of MathJax 3 from the sphinx-mathjax-offline wheel
        static = SRC/'_static'
        static.mkdir(parents=True, exist_ok=True)
        for f in CONF_DIR.glob('*.css'): shutil.copy2(f, static/f.name); self.copied.add(static/f.name)
        self.mathjax(static/'mathjax')
        # stale staged files (a notebook removed or renamed)
        for f in list(SRC.rglob('*')):
            if f.is_file() and f not in self.copied and not f.is_relative_to(static/'mathjax'): f.unlink()
        hidden = hidden_lines(self.nbs_path, self.cfg.config_path)
        for p in pages: p['hidden'] = hidden.get(p['src'], [])
        order_html = [d + '.html' for d in order]
        pages.sort(key=lambda p: order_html.index(p['html']) if p['html'] in order_html else 999)
        log(f'staged {len(pages)} notebooks for Sphinx: {time.time()-t:.1f} s')
        return dict(site_url=self.site_url, pages=pages, sidebar=order_html, warnings=self.warnings)

    def mathjax(self, dst):
        from importlib.metadata import distribution
        src = Path(distribution('sphinx-mathjax-offline').locate_file('sphinx-mathjax-offline/static/mathjax'))
        if not (src/'tex-chtml.js').exists(): raise SystemExit(f'MathJax not found in {src}: pip install -e ".[dev]"')
        shutil.rmtree(dst, ignore_errors=True)
        # the component, its fonts, the TeX extensions it autoloads, the menu
        # (not the speech rule engine, 4 MB, which only the menu's opt-in explorer loads)
        for part in ('tex-chtml.js', 'output/chtml/fonts/woff-v2', 'input/tex/extensions', 'ui'):
            s, d = src/part, dst/part
            d.parent.mkdir(parents=True, exist_ok=True)
            if s.is_dir(): shutil.copytree(s, d, dirs_exist_ok=True)
            else: shutil.copy2(s, d)


def _body_lines(src):
    "Source lines of a cell that show_doc never shows: not signatures, decorators, docstrings, comments or imports."
    code = '\n'.join('' if l.lstrip().startswith(('%', '!', '#|')) else l for l in src.splitlines())
    try: tree = ast.parse(code)
    except SyntaxError: return []
    skip = set()
    for n in ast.walk(tree):
        if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            first = min([n.lineno] + [d.lineno for d in n.decorator_list])
            skip |= set(range(first, n.body[0].lineno))
            b = n.body[0]
            if isinstance(b, ast.Expr) and isinstance(b.value, ast.Constant): skip |= set(range(b.lineno, b.end_lineno + 1))
        elif isinstance(n, (ast.Import, ast.ImportFrom)): skip |= set(range(n.lineno, n.end_lineno + 1))
    lines = code.splitlines()
    return [lines[k-1].strip() for k in range(1, len(lines) + 1)
            if k not in skip and len(lines[k-1].strip()) >= 24 and not lines[k-1].lstrip().startswith('#')]

def hidden_lines(nbs_path, root):
    "A few distinctive source lines of each notebook's hidden cells: the checker makes sure none is visible."
    from fastcore.nbio import read_nb
    res = {}
    hide = {'hide', 'export', 'exporti', 'default_exp'}
    for p in sorted(Path(nbs_path).rglob('*.ipynb')):
        if any(x.startswith(('.', '_')) for x in p.relative_to(nbs_path).parts): continue
        nb = read_nb(p)
        shown, lines = '', []
        for c in nb.cells:
            if c.cell_type != 'code': continue
            d = c.directives
            hidden = bool(hide & set(d)) or str(d.get('include', '')).strip().lower() == 'false'
            if not hidden: shown += c.source + '\n' + ''.join(_out_text(o) for o in c.get('outputs', [])); continue
            lines += sorted(_body_lines(c.source), key=len, reverse=True)[:2]
        res[str(p.relative_to(root))] = [l for l in lines if l not in shown][:12]
    return res


# ---------------------------------------------------------------- 3. Sphinx
def sphinx(cfg, jobs):
    from sphinx.cmd.build import build_main
    t = time.time()
    warn = CACHE/'sphinx-warnings.txt'
    os.environ['DARKNB_DOCS_TITLE'] = str(cfg.get('title') or cfg.lib_name)
    os.environ['DARKNB_DOCS_URL'] = str(cfg.get('doc_host', '')) + str(cfg.get('doc_baseurl', ''))
    os.environ['DARKNB_DOCS_REPO'] = str(cfg.get('git_url', ''))
    os.environ['DARKNB_DOCS_AUTHOR'] = str(cfg.get('copyright') or cfg.get('author') or '')
    os.environ['DARKNB_DOCS_STATIC'] = str(SRC/'_static')
    # built in .docs-cache/html (myst-nb writes its jupyter_execute/ beside the output folder), then moved to _site/;
    # a new folder every time, so nothing stale is left (Sphinx rewrites every page, its doctrees stay cached)
    out = CACHE/'html'
    shutil.rmtree(out, ignore_errors=True)
    args = ['-b', 'html', '-q', '-c', str(CONF_DIR), '-d', str(CACHE/'doctrees'), '-w', str(warn), '-j', str(jobs),
            str(SRC), str(out)]
    rc = build_main(args)
    if rc: log(f'FAIL: sphinx-build exited {rc}'); sys.exit(rc)
    shutil.rmtree(SITE, ignore_errors=True)
    shutil.move(out, SITE)
    log(f'sphinx: {time.time()-t:.1f} s')
    return [l for l in warn.read_text().splitlines() if 'WARNING' in l or 'ERROR' in l] if warn.exists() else []


def site_size():
    return sum(f.stat().st_size for f in SITE.rglob('*') if f.is_file() and '_shots' not in f.parts)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--force', action='store_true', help='reprocess every notebook (ignore the _proc cache)')
    ap.add_argument('--workers', type=int, default=None, help='nbdev processing workers (default: one per core)')
    ap.add_argument('--verbose', action='store_true', help="show nbdev's warnings about cells that mix imports and code")
    a = ap.parse_args()
    t0 = time.time()
    cfg, cache = process(a.force, a.workers, a.verbose)
    st = Stager(cfg, cache)
    man = st.run()
    warns = sphinx(cfg, jobs=min(os.cpu_count() or 1, 4))
    man['sphinx_warnings'] = warns
    man['build_seconds'] = round(time.time() - t0, 1)
    man['built_at'] = time.time()
    MANIFEST.write_text(json.dumps(man, indent=1))
    (SITE/'.nojekyll').touch()
    shutil.rmtree(SITE/'_sources', ignore_errors=True)      # empty: sources are not copied
    for w in man['warnings']: log('warning: ' + w)
    anchors = sorted(set(re.findall(r"local id not found in doc '([^']+)': '([^']+)'", '\n'.join(warns))))
    if anchors: log(f'warning: {len(anchors)} doc links point at anchors that do not exist: '
                    + ', '.join(f'{d}.html#{a}' for d, a in anchors))
    if warns: log(f'{len(warns)} Sphinx warnings (above; also in {(CACHE/"sphinx-warnings.txt").relative_to(ROOT)})')
    pages = man['pages']
    log(f"built {len(pages)} pages into {SITE.relative_to(ROOT)}/ in {man['build_seconds']} s, "
        f"{site_size()/2**20:.1f} MiB")


if __name__ == '__main__': main()
