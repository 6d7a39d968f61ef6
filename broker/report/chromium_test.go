package report

import (
	"bytes"
	"context"
	"image"
	"image/color"
	"image/png"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// RequireChromiumEnv set to 1 makes the browser tests fail, not skip, when
// Debian's chromium is missing (CI sets it; make deps installs it).
const RequireChromiumEnv = "WRIT_REQUIRE_CHROMIUM"

// chromium returns the path of a headless-capable Chromium, or skips (fails
// with WRIT_REQUIRE_CHROMIUM=1).
func chromium(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser"} {
		if path, err := exec.LookPath(name); err == nil {
			return path
		}
	}
	if os.Getenv(RequireChromiumEnv) == "1" {
		t.Fatalf("chromium is not installed (%s=1): run make deps", RequireChromiumEnv)
	}
	t.Skipf("chromium is not installed: make deps installs Debian's chromium; %s=1 makes this a failure", RequireChromiumEnv)
	return ""
}

// runChromium runs headless Chromium on the page with args and returns its
// stdout and stderr.
func runChromium(t *testing.T, bin, page string, args ...string) (string, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	all := append([]string{"--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--user-data-dir=" + t.TempDir(),
		"--enable-logging=stderr", "--v=0"}, args...)
	cmd := exec.CommandContext(ctx, bin, append(all, "file://"+page)...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("chromium %v: %v\n%s", args, err, stderr.String())
	}
	return stdout.String(), stderr.String()
}

// TestHTMLRendersInChromium: the page, opened by headless Chromium, has its
// three charts with their bars and the report's numbers in the DOM; no
// script ran (the <script> reason stays text) and the CSP refused nothing
// (the page asks for nothing); the screenshot decodes and shows the
// charts' colours, not a blank page.
func TestHTMLRendersInChromium(t *testing.T) {
	bin := chromium(t)
	f := newFixture(t)
	var b bytes.Buffer
	if err := f.build(t, Options{}).WriteHTML(&b); err != nil {
		t.Fatal(err)
	}
	page := filepath.Join(t.TempDir(), "report.html")
	if err := os.WriteFile(page, b.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}

	dom, logs := runChromium(t, bin, page, "--dump-dom")
	for _, id := range []string{"chart-standing", "chart-decisions", "chart-reasons"} {
		svg := regexp.MustCompile(`(?s)<svg id="` + id + `".*?</svg>`).FindString(dom)
		if svg == "" {
			t.Fatalf("no <svg id=%q> in the DOM:\n%s", id, dom)
		}
		if n := strings.Count(svg, "<rect"); n < 3 {
			t.Errorf("chart %s has %d rects; want legend and bars", id, n)
		}
	}
	for _, want := range []string{`id="good-nodes">1<`, `id="nodes">3<`, `id="logs-verified">2<`, `id="logs-failed">0<`,
		"attestation_failed", "writ_missing", "2/2", "1/2", NotVerified, "&lt;script&gt;alert(1)&lt;/script&gt;"} {
		if !strings.Contains(dom, want) {
			t.Errorf("the DOM lacks %q", want)
		}
	}
	if strings.Contains(dom, "<script") {
		t.Error("a <script> element in the DOM")
	}
	if strings.Contains(logs, "Content Security Policy") || strings.Contains(logs, "Refused to") {
		t.Errorf("the CSP refused something the page asked for:\n%s", logs)
	}

	shot := filepath.Join(t.TempDir(), "report.png")
	runChromium(t, bin, page, "--screenshot="+shot, "--window-size=1280,1400", "--hide-scrollbars")
	raw, err := os.ReadFile(shot)
	if err != nil {
		t.Fatal(err)
	}
	img, err := png.Decode(bytes.NewReader(raw))
	if err != nil {
		t.Fatalf("the screenshot is not a PNG: %v", err)
	}
	colours := map[color.RGBA]int{}
	bounds := img.Bounds()
	for y := bounds.Min.Y; y < bounds.Max.Y; y += 2 {
		for x := bounds.Min.X; x < bounds.Max.X; x += 2 {
			colours[rgba(img, x, y)]++
		}
	}
	if len(colours) < 2 {
		t.Fatalf("the screenshot is one colour")
	}
	for name, want := range map[string]color.RGBA{"allowed/good green": {0x2d, 0xa4, 0x4e, 0xff}, "refused red": {0xcf, 0x22, 0x2e, 0xff}} {
		if colours[want] < 20 {
			t.Errorf("the screenshot shows %d pixels of the %s; want the charts drawn", colours[want], name)
		}
	}
}

func rgba(img image.Image, x, y int) color.RGBA {
	r, g, b, a := img.At(x, y).RGBA()
	return color.RGBA{uint8(r >> 8), uint8(g >> 8), uint8(b >> 8), uint8(a >> 8)}
}
