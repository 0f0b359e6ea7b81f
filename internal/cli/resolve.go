package cli

import (
	"context"
	"fmt"
	"strings"

	"github.com/google/uuid"

	"github.com/aetherium/aetherium/pkg/client"
)

// maxListPages bounds how many pages a listing follows, so a server whose cursors never end cannot hang the CLI.
const maxListPages = 1000

// resolveVM turns what the user typed (an id or a name) into a VM id. Ids are UUIDs and are used as they are, with
// no request; anything else is a name, looked up among the VMs that are not deleted (names of deleted VMs may be
// reused). The VM is returned too when the lookup fetched it.
func resolveVM(ctx context.Context, c *client.Client, ref string) (string, *client.VM, error) {
	if ref == "" {
		return "", nil, usagef("empty VM name or id")
	}
	if _, err := uuid.Parse(ref); err == nil {
		return ref, nil, nil
	}
	vms, err := listAllVMs(ctx, c, nil, 0)
	if err != nil {
		return "", nil, err
	}
	var matches []client.VM
	for _, vm := range vms {
		if vm.Name == ref && vm.Status != "deleted" {
			matches = append(matches, vm)
		}
	}
	switch len(matches) {
	case 0:
		return "", nil, &userError{msg: fmt.Sprintf("vm not found: no VM is named %q (not_found)", ref)}
	case 1:
		return matches[0].ID, &matches[0], nil
	}
	ids := make([]string, len(matches))
	for i, vm := range matches {
		ids[i] = vm.ID
	}
	return "", nil, &userError{msg: fmt.Sprintf("%d VMs are named %q (%s); use an id", len(matches), ref, strings.Join(ids, ", "))}
}

// listAllVMs follows the list's cursors until the end, or until limit VMs (0: no limit).
func listAllVMs(ctx context.Context, c *client.Client, status []string, limit int) ([]client.VM, error) {
	var all []client.VM
	cursor := ""
	for range maxListPages {
		page, err := c.ListVMs(ctx, client.ListVMsOptions{Status: status, Cursor: cursor})
		if err != nil {
			return nil, err
		}
		all = append(all, page.VMs...)
		if limit > 0 && len(all) >= limit {
			return all[:limit], nil
		}
		if page.NextCursor == "" || page.NextCursor == cursor {
			return all, nil
		}
		cursor = page.NextCursor
	}
	return all, nil
}
