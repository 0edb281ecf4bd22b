package process

import (
	"os"
	"strings"
	"testing"
)

func TestParseTestdata(t *testing.T) {
	b, err := os.ReadFile("testdata/order.yaml")
	if err != nil {
		t.Fatal(err)
	}
	d, err := Parse(b)
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	if d.Name != "order" || len(d.Steps) != 4 || d.Steps[1].Task == nil || d.Steps[0].Timeout.Minutes() != 1 {
		t.Errorf("Parse gave %+v", d)
	}
}

func TestParseRefusesBadDefinitions(t *testing.T) {
	const head = "name: p\nstart: s\ncompleted: c\nfailed: f\ncompensated: x\n"
	tests := []struct {
		name string
		yaml string
		want []string // every fragment must appear in the error
	}{
		{"no steps", head, []string{`process "p"`, "at least one step"}},
		{"missing timeout", head + "steps:\n- name: pay\n  command: {type: a, success: [b]}\n", []string{`process "p" step 1 "pay"`, "timeout is required"}},
		{"command and task", head + "steps:\n- name: pay\n  timeout: 1m\n  command: {type: a, success: [b]}\n  task: {title: t, group: g}\n", []string{`step 1 "pay"`, "exactly one of command or task"}},
		{"neither command nor task", head + "steps:\n- name: pay\n  timeout: 1m\n", []string{`step 1 "pay"`, "exactly one of command or task"}},
		{"no success reply", head + "steps:\n- name: pay\n  timeout: 1m\n  command: {type: a}\n", []string{`step 1 "pay"`, "command.success"}},
		{"unknown field names step", head + "steps:\n- name: ok\n  timeout: 1m\n  command: {type: a, success: [b]}\n- name: cook\n  timout: 1m\n", []string{`process "p" step 2 "cook"`, `unknown field "timout"`}},
		{"bad duration", head + "steps:\n- name: pay\n  timeout: soon\n  command: {type: a, success: [b]}\n", []string{`step 1 "pay"`, `"soon"`}},
		{"duplicate step", head + "steps:\n- name: pay\n  timeout: 1m\n  command: {type: a, success: [b]}\n- name: pay\n  timeout: 1m\n  command: {type: a, success: [c]}\n", []string{`step 2 "pay"`, "used by an earlier step"}},
		{"task without assignee", head + "steps:\n- name: ok\n  timeout: 1m\n  task: {title: t}\n", []string{`step 1 "ok"`, "assignee or a group"}},
		{"task with retries", head + "steps:\n- name: ok\n  timeout: 1m\n  retries: 2\n  task: {title: t, group: g}\n", []string{`step 1 "ok"`, "retries is not supported"}},
		{"compensation reply without timeout", head + "steps:\n- name: pay\n  timeout: 1m\n  command: {type: a, success: [b]}\n  compensate: {type: u, reply: v}\n", []string{`step 1 "pay"`, "compensate.timeout"}},
		{"reply type listed twice", head + "steps:\n- name: pay\n  timeout: 1m\n  command: {type: a, success: [b], failure: [b]}\n", []string{`step 1 "pay"`, "listed twice"}},
		{"missing completed type", "name: p\nstart: s\nfailed: f\ncompensated: x\nsteps:\n- name: pay\n  timeout: 1m\n  command: {type: a, success: [b]}\n", []string{`process "p"`, "completed event type"}},
		{"bad process name", "name: P_1\nstart: s\ncompleted: c\nfailed: f\ncompensated: x\nsteps:\n- name: pay\n  timeout: 1m\n  command: {type: a, success: [b]}\n", []string{`process "P_1"`, "name must be"}},
		{"not yaml", "name: [", []string{"not valid YAML"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse([]byte(tc.yaml))
			if err == nil {
				t.Fatal("Parse accepted an invalid definition")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
		})
	}
}

func TestNewSetRefusesSharedStartType(t *testing.T) {
	a := &Definition{Name: "a", Start: "s"}
	b := &Definition{Name: "b", Start: "s"}
	if _, err := NewSet(a, b); err == nil || !strings.Contains(err.Error(), `process "a" and process "b"`) {
		t.Errorf("NewSet error = %v, want both processes named", err)
	}
}

func TestLoadDirNamesTheFile(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(dir+"/bad.yaml", []byte("name: p\nstart: s\ncompleted: c\nfailed: f\ncompensated: x\nsteps:\n- name: pay\n  command: {type: a, success: [b]}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := LoadDir(dir)
	if err == nil || !strings.Contains(err.Error(), `bad.yaml: process "p" step 1 "pay": timeout is required`) {
		t.Errorf("LoadDir error = %v", err)
	}
}

func FuzzParse(f *testing.F) {
	b, _ := os.ReadFile("testdata/order.yaml")
	f.Add(b)
	f.Add([]byte("name: p\nsteps: [{name: a}]"))
	f.Fuzz(func(t *testing.T, data []byte) {
		d, err := Parse(data)
		if err == nil && d.Validate() != nil {
			t.Fatal("Parse returned a definition that does not validate")
		}
	})
}
