import EdgemuxCore

EdgemuxCommand.main()
