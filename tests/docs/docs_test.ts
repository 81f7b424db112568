/**
 * The README is for a newcomer: at most 10 KB, starting with the two commands that show and
 * check everything; it and docs/ link only to files (and headings) that exist.
 */
import { ok, strictEqual } from "node:assert/strict";
import { dirname, join, relative } from "node:path";
import { ROOT } from "../_support/helpers.ts";

const README = join(ROOT, "README.md");

/** Every Markdown file the links are checked in: README.md and docs/**. */
async function markdownFiles(): Promise<string[]> {
  const files = [README];
  const walk = async (dir: string) => {
    for await (const e of Deno.readDir(dir)) {
      const p = join(dir, e.name);
      if (e.isDirectory) await walk(p);
      else if (e.name.endsWith(".md")) files.push(p);
    }
  };
  await walk(join(ROOT, "docs"));
  return files;
}

/** GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens. */
function anchorOf(heading: string): string {
  return heading.trim().toLowerCase().replace(/[^\p{L}\p{N} _-]/gu, "").replace(/ /g, "-");
}

/** `[text](target)` links outside code blocks and code spans. */
function linksIn(markdown: string): string[] {
  const prose = markdown.replace(/```[\s\S]*?```/g, "").replace(/`[^`\n]*`/g, "");
  return [...prose.matchAll(/\]\(([^)\s]+)\)/g)].map((m) => m[1]);
}

Deno.test("README.md is at most 10 KB and starts with the demo and the test commands", async () => {
  const bytes = await Deno.readFile(README);
  ok(bytes.length <= 10 * 1024, `README.md is ${bytes.length} bytes`);
  const text = new TextDecoder().decode(bytes);
  const firstBlock = /```sh\n([\s\S]*?)```/.exec(text);
  ok(firstBlock && text.indexOf(firstBlock[0]) < text.indexOf("\n## "), "a code block first");
  const commands = firstBlock![1].trim().split("\n").map((l) => l.replace(/\s*#.*$/, ""));
  strictEqual(commands[0], "bash scripts/demo.sh");
  strictEqual(commands[1], "bash scripts/test.sh");
});

Deno.test("every relative link in README.md and docs/ resolves, headings included", async () => {
  const broken: string[] = [];
  for (const file of await markdownFiles()) {
    const text = await Deno.readTextFile(file);
    for (const link of linksIn(text)) {
      if (/^[a-z]+:/i.test(link)) continue; // http(s), mailto: not ours to check
      const [path, anchor] = link.split("#");
      const target = path === "" ? file : join(dirname(file), decodeURIComponent(path));
      const where = `${relative(ROOT, file)}: ${link}`;
      let body: string;
      try {
        const st = await Deno.stat(target);
        if (!st.isFile || !anchor) continue;
        body = await Deno.readTextFile(target);
      } catch {
        broken.push(where);
        continue;
      }
      const anchors = [...body.matchAll(/^#{1,6} (.+)$/gm)].map((m) => anchorOf(m[1]));
      if (!anchors.includes(anchor)) broken.push(`${where} (no such heading)`);
    }
  }
  strictEqual(broken.join("\n"), "", "broken links");
});

Deno.test("the link checker reads anchors and links as GitHub does", () => {
  strictEqual(
    anchorOf("VHD files and chains (`-src disk.vhd`)"),
    "vhd-files-and-chains--src-diskvhd",
  );
  strictEqual(linksIn("[a](x.md) `[b](y.md)` [c](d/e.md#f)").join(" "), "x.md d/e.md#f");
});
