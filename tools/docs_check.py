"""Check the built docs site in a real headless Chromium (driven by Playwright), as tools/docs.sh --check runs it.

Every page of `_site/` is loaded from a local http.server; the check fails (exit 1) and lists each problem
(page, what) when a page has console errors or asks for anything but the local server, an image does not
load, a sidebar or internal link points to a page or an anchor that does not exist, math is not typeset,
`#|` directives or the code of hidden cells are visible, or the search does not find a word of a lesson.
A screenshot of each page is saved under `_site/_shots/`.
"""
import argparse, json, re, sys, time
from collections import Counter
from pathlib import Path
from urllib.parse import urlsplit, unquote

ROOT = Path(__file__).resolve().parent.parent
CHROME_FLAGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
                '--disable-background-networking', '--disable-component-update', '--disable-sync',
                '--disable-dev-shm-usage']
SHOT_MAX_H = 12000     # px: the tallest screenshot kept (the top of longer pages)

JS_PAGE = r"""async () => {
  const imgs = [...document.images];
  imgs.forEach(i => { i.loading = 'eager'; });
  await Promise.all(imgs.map(i => i.complete ? null : new Promise(r => { i.onload = i.onerror = r; setTimeout(r, 5000); })));
  if (window.MathJax && MathJax.startup && MathJax.startup.promise) { try { await MathJax.startup.promise; } catch (e) {} }
  const art = document.querySelector('article') || document.body;
  const links = [...document.querySelectorAll('a[href]')].map(a => ({
    href: a.href, raw: a.getAttribute('href'), text: (a.innerText || a.getAttribute('aria-label') || '').trim().slice(0, 60),
    sidebar: !!a.closest('.sidebar-tree')}));
  const math = [...document.querySelectorAll('span.math, div.math')];
  return {
    title: document.title,
    ids: [...document.querySelectorAll('[id]')].map(e => e.id),
    images: imgs.map(i => ({src: i.currentSrc || i.src, w: i.naturalWidth, inArticle: art.contains(i)})),
    links,
    math: math.length, mathTypeset: math.filter(m => m.querySelector('mjx-container')).length,
    mjx: document.querySelectorAll('mjx-container').length,
    untypeset: math.filter(m => !m.querySelector('mjx-container')).slice(0, 3).map(m => m.textContent.slice(0, 60)),
    text: art.innerText,
    prose: [...art.querySelectorAll('p, li')].filter(e => !e.closest('.cell_output, .highlight')).map(e => {
      const c = e.cloneNode(true); c.querySelectorAll('code, .math').forEach(x => x.remove()); return c.textContent; }).join('\n'),
    height: document.documentElement.scrollHeight,
  };
}"""


def site_pages(site):
    return sorted(p.relative_to(site).as_posix() for p in site.rglob('*.html')
                  if not any(x.startswith(('_', '.')) for x in p.relative_to(site).parts))


def pick_search_word(texts, page):
    "A word of `page` that few other pages have (the longest of the rarest), to search for."
    words = lambda t: set(re.findall(r'\b[a-z]{6,}\b', t))
    mine = words(texts[page])
    df = Counter(w for p, t in texts.items() if p != page for w in words(t) & mine)
    return sorted(mine, key=lambda w: (df[w], -len(w), w))[0] if mine else None


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--url', required=True, help='where the site is served, e.g. http://127.0.0.1:8000/')
    ap.add_argument('--site', default=str(ROOT/'_site'))
    ap.add_argument('--manifest', default=str(ROOT/'.docs-cache'/'manifest.json'))
    ap.add_argument('--chromium', default='/usr/bin/chromium')
    ap.add_argument('--search', default=None, help='WORD=page.html to search for (default: a rare word of the first lesson)')
    a = ap.parse_args()
    from playwright.sync_api import sync_playwright

    t0 = time.time()
    site, base = Path(a.site), a.url.rstrip('/') + '/'
    man = json.loads(Path(a.manifest).read_text())
    info = {p['html']: p for p in man['pages']}
    site_url = man.get('site_url', '')
    pages = site_pages(site)
    shots = site/'_shots'
    shots.mkdir(exist_ok=True)
    for f in shots.glob('*.png'): f.unlink()
    problems, results = [], {}
    origin = urlsplit(base).netloc

    def local(url):
        "The path of `url` in the site, or None for an external address."
        if site_url and url.startswith(site_url): url = base + url[len(site_url):]
        u = urlsplit(url)
        if u.scheme in ('http', 'https') and u.netloc == origin: return unquote(u.path.lstrip('/')) or 'index.html', unquote(u.fragment)
        return None

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=a.chromium, headless=True, args=CHROME_FLAGS)
        ctx = browser.new_context(viewport={'width': 1280, 'height': 900}, service_workers='block')
        outside = []
        def route(r):
            if urlsplit(r.request.url).netloc == origin or r.request.url.startswith(('data:', 'blob:')): return r.continue_()
            outside.append(r.request.url); r.abort()
        ctx.route('**/*', route)
        page = ctx.new_page()
        cur = {'p': None}
        page.on('console', lambda m: m.type == 'error' and problems.append((cur['p'], f'console error: {m.text[:200]}')))
        page.on('pageerror', lambda e: problems.append((cur['p'], f'script error: {str(e)[:200]}')))
        page.on('response', lambda r: r.status >= 400 and problems.append((cur['p'], f'HTTP {r.status} for {r.url}')))
        page.on('requestfailed', lambda r: urlsplit(r.url).netloc == origin and problems.append((cur['p'], f'request failed: {r.url}')))

        for p in pages:
            cur['p'], n_out = p, len(outside)
            try:
                resp = page.goto(base + p, wait_until='load', timeout=60000)
                if not resp or resp.status != 200: problems.append((p, f'page did not load (status {resp and resp.status})')); continue
                r = page.evaluate(JS_PAGE)
            except Exception as e:
                problems.append((p, f'page did not load: {str(e)[:200]}')); continue
            results[p] = r
            for u in outside[n_out:]: problems.append((p, f'network request outside the site: {u[:120]}'))
            # images
            for im in r['images']:
                if im['w'] == 0: problems.append((p, f"image does not load: {im['src'][len(base):] if im['src'].startswith(base) else im['src']}"))
            want = info.get(p, {}).get('images', 0)
            got = sum(im['inArticle'] for im in r['images'])
            if got < want: problems.append((p, f'{got} images on the page, the notebook has {want}'))
            # math
            if info.get(p, {}).get('math', 0) and not r['mjx']: problems.append((p, 'math is not typeset (no MathJax output)'))
            for m in r['untypeset']: problems.append((p, f'math not typeset: {m}'))
            # directives and hidden code
            for l in r['text'].splitlines():
                if '#|' in l: problems.append((p, f'directive text visible: {l.strip()[:80]}'))
            for l in info.get(p, {}).get('hidden', []):
                if l in r['text']: problems.append((p, f'code of a hidden cell is visible: {l[:80]}'))
            # screenshot
            h = min(r['height'], SHOT_MAX_H)
            page.screenshot(path=str(shots/(p.replace('/', '_')[:-5] + '.png')), full_page=True,
                            clip={'x': 0, 'y': 0, 'width': 1280, 'height': h}, animations='disabled')

        # links: every page they name exists, every anchor is an id of that page
        ids = {p: set(r['ids']) for p, r in results.items()}
        n_links = n_ext = 0
        files = {f.relative_to(site).as_posix() for f in site.rglob('*') if f.is_file()}
        seen = set()
        for p, r in results.items():
            for l in r['links']:
                loc = local(l['href'])
                if loc is None:
                    n_ext += l['href'].startswith('http'); continue
                n_links += 1
                path, frag = loc
                if path.endswith('/'): path += 'index.html'
                key = (p, path, frag)
                if key in seen: continue
                seen.add(key)
                where = 'sidebar link' if l['sidebar'] else 'link'
                if path not in files: problems.append((p, f"{where} to a missing page: {l['raw']} ({l['text']})")); continue
                if frag and path in ids and frag not in ids[path]:
                    problems.append((p, f"{where} to a missing anchor: {l['raw']} ({l['text']})"))
        # the sidebar lists the notebooks in the order of nbs/sidebar.yml
        side = [local(l['href'])[0] for l in results.get('index.html', {}).get('links', []) if l['sidebar'] and local(l['href'])]
        want_side = [h for h in man['sidebar'] if h != 'index.html']
        if side != want_side: problems.append(('index.html', f'sidebar order {side} is not that of nbs/sidebar.yml {want_side}'))

        # search: type a word of the first lesson into the search box, see a result that links to it
        lesson = want_side[0] if want_side else 'index.html'
        word = None
        if a.search: word, lesson = a.search.split('=', 1)
        elif lesson in results: word = pick_search_word({p: r['prose'] for p, r in results.items()}, lesson)
        search_ok = False
        if word:
            cur['p'] = 'search.html'
            page.goto(base + 'index.html')
            box = page.locator('input.sidebar-search').first
            box.fill(word); box.press('Enter')
            try:
                page.wait_for_selector(f'#search-results a[href*="{lesson[:-5]}"]', timeout=30000)
                search_ok = True
            except Exception:
                found = page.eval_on_selector_all('#search-results a', 'as => as.map(a => a.getAttribute("href"))')
                problems.append(('search.html', f'searching "{word}" finds no link to {lesson} (results: {found[:5]})'))
            page.screenshot(path=str(shots/'search.png'))
        else: problems.append(('search.html', 'no word to search for'))
        browser.close()

    size = sum(f.stat().st_size for f in site.rglob('*') if f.is_file() and '_shots' not in f.relative_to(site).parts)
    n_img = sum(len(r['images']) for r in results.values())
    n_math = sum(r['mjx'] for r in results.values())
    print(f"docs check: {len(results)}/{len(pages)} pages loaded, {n_img} images, {n_links} internal and sidebar links "
          f"checked ({n_ext} external links not followed), {n_math} formulas typeset, "
          f"search for \"{word}\" {'finds' if search_ok else 'does NOT find'} {lesson}")
    print(f"build {man.get('build_seconds', '?')} s, check {time.time()-t0:.1f} s, site {size/2**20:.1f} MiB "
          f"(screenshots in {shots.relative_to(ROOT) if shots.is_relative_to(ROOT) else shots}/)")
    if problems:
        print(f'\nFAIL: {len(problems)} problems')
        for p, what in problems: print(f'  {p}: {what}')
        return 1
    print('docs check passed')
    return 0


if __name__ == '__main__': sys.exit(main())
