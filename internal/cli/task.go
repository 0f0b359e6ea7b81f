package cli

import (
	"context"
	"errors"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/aetherium/aetherium/pkg/client"
)

func (a *app) taskCommand() *cobra.Command {
	task := a.group("task", "Inspect asynchronous tasks")
	task.AddCommand(a.taskGet())
	return task
}

func (a *app) taskGet() *cobra.Command {
	var wait bool
	cmd := &cobra.Command{
		Use:   "get ID",
		Short: "Show a task",
		Long: `Show a task: every mutating call (creating or deleting a VM, running a command or a job) is a task that
runs in the background. With --wait, wait until it has finished first.`,
	}
	cmd.Flags().BoolVar(&wait, "wait", false, "wait until the task has finished")
	return a.leaf(cmd, cobra.ExactArgs(1), exitFailure, func(ctx context.Context, c *client.Client, _ *cobra.Command, args []string) error {
		var (
			task *client.Task
			err  error
		)
		if wait {
			stop := a.startProgress("waiting for task " + args[0])
			task, err = c.WaitTask(ctx, args[0], 0)
			stop()
			var we *client.WaitError
			if errors.As(err, &we) {
				return &userError{msg: a.waitMessage(we, "")}
			}
		} else {
			task, err = c.GetTask(ctx, args[0])
		}
		if err != nil {
			return err
		}
		if a.jsonOut {
			return printJSON(a.streams.Out, task)
		}
		return printFields(a.streams.Out, []field{
			{"ID", task.ID},
			{"Type", task.Type},
			{"Status", task.Status},
			{"Error", task.Error},
			{"Priority", task.Priority},
			{"VM", task.VMID},
			{"Job", task.JobID},
			{"Worker", task.WorkerID},
			{"Attempts", fmt.Sprintf("%d (max retries %d)", task.Attempts, task.MaxRetries)},
			{"Result", compactJSON(task.Result)},
			{"Created", fmtTime(task.CreatedAt)},
			{"Scheduled", fmtTimePtr(task.ScheduledAt)},
			{"Started", fmtTimePtr(task.StartedAt)},
			{"Completed", fmtTimePtr(task.CompletedAt)},
		})
	})
}
